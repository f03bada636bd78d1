"""The gateway's gRPC transport: generic handlers over raw bytes; decode the header, call, return.

ModelInfer is never deserialized here: only model name and version are peeked from its bytes.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson

from common import EXTENSIONS, __version__
from common.errors import TensorgateError, invalid_argument
from common.names import check_name
from common.proto import grpc_service_pb2 as pb
from common.uploads import check_upload
from gateway import trace_log, trace_share
from gateway.feedback import encode_result, handle_feedback
from gateway.peek import model_and_version, routing_fields
from gateway.pipeline import Access, Headers, Pipeline

SERVICE = "inference.GRPCInferenceService"
#: tensorgate's own RPC, JSON bytes in and out (no .proto): `/tensorgate.Feedback/Post`.
FEEDBACK_SERVICE = "tensorgate.Feedback"
_FORWARDED = ("ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics")

Handler = Callable[[bytes, Any], Awaitable[bytes]]


class GrpcTransport:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def model_infer(self, request: bytes, context: Any) -> bytes:
        model, version, request_id = routing_fields(request)
        return await self.pipeline.infer(request, model, version, context.time_remaining(), "grpc",
                                         _headers(context), request_id)

    async def feedback(self, request: bytes, context: Any) -> bytes:
        """The HTTP body, naming its model: `{"model": "digits", "id": ..., "truth": ...}`."""
        model = _feedback_model(request)
        return encode_result(await handle_feedback(self.pipeline, _headers(context), model,
                                                   request))

    async def server_live(self, request: bytes, context: Any) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, request: bytes, context: Any) -> bytes:
        return pb.ServerReadyResponse(ready=await self.pipeline.ready()).SerializeToString()

    async def server_metadata(self, request: bytes, context: Any) -> bytes:
        self.pipeline.admit(_headers(context), None)
        answer = pb.ServerMetadataResponse(name="tensorgate", version=__version__,
                                           extensions=EXTENSIONS)
        return answer.SerializeToString()

    async def repository_index(self, request: bytes, context: Any) -> bytes:
        return await self.pipeline.ask("RepositoryIndex", request, headers=_headers(context),
                                       access="admin")

    async def trace_setting(self, request: bytes, context: Any) -> bytes:
        """Triton's trace extension: an admin reads or changes the global or a model's settings."""
        message = pb.TraceSettingRequest.FromString(request)
        headers = _headers(context)
        principal = self.pipeline.admit(headers, None, admin=True)
        model = message.model_name or None
        if model is not None:
            await trace_share.check_served(self.pipeline, model, headers)
        # NOTE: an empty list clears a setting, as null does over HTTP.
        changes = {key: list(value.value) or None for key, value in message.settings.items()}
        shown = (await trace_share.change_trace(changes, model, principal) if changes
                 else trace_log.TRACE.shown(model))
        answer = pb.TraceSettingResponse()
        for key, value in shown.items():
            answer.settings[key].value.extend(value if isinstance(value, list) else [value])
        return answer.SerializeToString()

    async def log_settings(self, request: bytes, context: Any) -> bytes:
        """Triton's logging extension: an admin reads or changes the log settings."""
        message = pb.LogSettingsRequest.FromString(request)
        principal = self.pipeline.admit(_headers(context), None, admin=True)
        changes = {key: getattr(value, kind) if (kind := value.WhichOneof("parameter_choice"))
                   else None for key, value in message.settings.items()}
        shown = (await trace_share.change_log(changes, principal) if changes
                 else trace_log.log_settings())
        answer = pb.LogSettingsResponse()
        for key, setting in shown.items():
            kind = ("string_param" if isinstance(setting, str) else "bool_param"
                    if isinstance(setting, bool) else "uint32_param")
            setattr(answer.settings[key], kind, setting)
        return answer.SerializeToString()

    def repository_change(self, method: str) -> Handler:
        """Load or unload: every worker makes the change (RepositoryModel{Load,Unload})."""
        kind = getattr(pb, f"{method}Request")

        async def handler(request: bytes, context: Any) -> bytes:
            message = kind.FromString(request)
            # NOTE: checked here and again in each worker, before anything touches the disk.
            model = check_name(message.model_name)
            check_upload(message.parameters.keys() if method == "RepositoryModelLoad" else ())
            return await self.pipeline.broadcast(method, request, model, _headers(context))

        return handler

    def forward(self, method: str) -> Handler:
        """A control-plane RPC whose request names the model in fields 1 and 2."""
        access: Access = "open" if method == "ModelReady" else "key"

        async def handler(request: bytes, context: Any) -> bytes:
            model, version = model_and_version(request)
            return await self.pipeline.ask(method, request, model, version, _headers(context),
                                           access)

        return handler

    def handlers(self) -> grpc.GenericRpcHandler:
        table: dict[str, Handler] = {
            "ModelInfer": self.model_infer,
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ServerMetadata": self.server_metadata,
            "RepositoryIndex": self.repository_index,
            "TraceSetting": self.trace_setting,
            "LogSettings": self.log_settings,
        }
        table.update({name: self.forward(name) for name in _FORWARDED})
        table.update({name: self.repository_change(name)
                      for name in ("RepositoryModelLoad", "RepositoryModelUnload")})
        return grpc.method_handlers_generic_handler(
            SERVICE, {name: grpc.unary_unary_rpc_method_handler(_aborting(fn))
                      for name, fn in table.items()})

    def feedback_handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            FEEDBACK_SERVICE,
            {"Post": grpc.unary_unary_rpc_method_handler(_aborting(self.feedback))})


def _feedback_model(request: bytes) -> str:
    try:
        document = orjson.loads(request)
    except orjson.JSONDecodeError as exc:
        raise invalid_argument(f"feedback is not valid JSON: {exc}") from None
    model = document.get("model") if isinstance(document, dict) else None
    if not isinstance(model, str) or not model:
        raise invalid_argument('feedback over gRPC names its model: {"model": "digits", ...}')
    return model


def _headers(context: Any) -> Headers:
    """The call's metadata; gRPC names are lower case already."""
    return dict(context.invocation_metadata() or ())


def _aborting(handler: Handler) -> Handler:
    async def wrapped(request: bytes, context: Any) -> bytes:
        try:
            return await handler(request, context)
        except TensorgateError as exc:
            if exc.retry_after is not None:
                wait = str(max(1, math.ceil(exc.retry_after)))
                context.set_trailing_metadata((("retry-after", wait),))
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    return wrapped
