"""The runtime's transport: OIP gRPC, each RPC decodes, calls the store or a scheduler, encodes."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from common import __version__
from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from common.proto import grpc_service_pb2_grpc as pb_grpc
from runtime import describe
from runtime.model import ModelStore
from runtime.scheduler import Scheduler

R = TypeVar("R")


def _aborts(
    handler: Callable[[Any, Any, Any], Awaitable[R]],
) -> Callable[[Any, Any, Any], Awaitable[R]]:
    """Answer a TensorgateError with its own gRPC code and message."""

    @functools.wraps(handler)
    async def wrapped(self: Any, request: Any, context: Any) -> R:
        try:
            return await handler(self, request, context)
        except TensorgateError as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    return wrapped


class RuntimeService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, store: ModelStore, schedulers: dict[int, Scheduler]) -> None:
        self.store = store
        # Keyed by id(ServedModel): the hot path does one dict lookup after the store's.
        self.schedulers = schedulers
        self.ready = False

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="tensorgate-runtime", version=__version__, extensions=describe.EXTENSIONS
        )

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        try:
            self.store.get(request.name, request.version)
        except TensorgateError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    @_aborts
    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        return describe.metadata(self.store, request.name, request.version)

    @_aborts
    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        model = self.store.get(request.name, request.version)
        return pb.ModelConfigResponse(config=describe.model_config(model))

    @_aborts
    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        return describe.statistics(self.store, request.name, request.version)

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        return describe.index(self.store, self.ready)

    @_aborts
    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        model = self.store.get(request.model_name, request.model_version)
        return await self.schedulers[id(model)].infer(request, context.time_remaining())
