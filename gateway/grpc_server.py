"""The gateway's gRPC transport: generic handlers over raw bytes; decode the header, call, return.

ModelInfer is never deserialized here: only model name and version are peeked from its bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from common import EXTENSIONS, __version__
from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from gateway.peek import model_and_version
from gateway.pipeline import Pipeline

SERVICE = "inference.GRPCInferenceService"
_FORWARDED = ("ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics")

Handler = Callable[[bytes, Any], Awaitable[bytes]]


class GrpcTransport:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def model_infer(self, request: bytes, context: Any) -> bytes:
        model, version = model_and_version(request)
        return await self.pipeline.infer(request, model, version, context.time_remaining(), "grpc")

    async def server_live(self, request: bytes, context: Any) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, request: bytes, context: Any) -> bytes:
        return pb.ServerReadyResponse(ready=await self.pipeline.ready()).SerializeToString()

    async def server_metadata(self, request: bytes, context: Any) -> bytes:
        answer = pb.ServerMetadataResponse(name="tensorgate", version=__version__,
                                           extensions=EXTENSIONS)
        return answer.SerializeToString()

    async def repository_index(self, request: bytes, context: Any) -> bytes:
        return await self.pipeline.ask("RepositoryIndex", request)

    def forward(self, method: str) -> Handler:
        """A control-plane RPC whose request names the model in fields 1 and 2."""

        async def handler(request: bytes, context: Any) -> bytes:
            model, version = model_and_version(request)
            return await self.pipeline.ask(method, request, model, version)

        return handler

    def handlers(self) -> grpc.GenericRpcHandler:
        table: dict[str, Handler] = {
            "ModelInfer": self.model_infer,
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ServerMetadata": self.server_metadata,
            "RepositoryIndex": self.repository_index,
        }
        table.update({name: self.forward(name) for name in _FORWARDED})
        return grpc.method_handlers_generic_handler(
            SERVICE, {name: grpc.unary_unary_rpc_method_handler(_aborting(fn))
                      for name, fn in table.items()})


def _aborting(handler: Handler) -> Handler:
    async def wrapped(request: bytes, context: Any) -> bytes:
        try:
            return await handler(request, context)
        except TensorgateError as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    return wrapped
