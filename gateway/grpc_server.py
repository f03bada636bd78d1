"""The gateway's gRPC transport: generic handlers over raw bytes; decode the header, call, return.

Credentials are checked from the metadata before the message is read; ModelInfer is never
deserialized here: only model name and version are peeked from its bytes.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import orjson

from common import __version__, memory
from common.errors import TensorgateError, invalid_argument
from common.names import check_name
from common.policy import Principal
from common.proto import grpc_service_pb2 as pb
from common.uploads import check_upload
from gateway import trace_log, trace_share
from gateway.context import Headers, RequestContext
from gateway.feedback import encode_result, handle_feedback
from gateway.grpc_stream import Stream, deadline
from gateway.peek import infer_fields, model_and_version
from gateway.pipeline import Access, Pipeline
from gateway.request_parts import SPLIT_FROM_BYTES, parts_of
from gateway.shm import Kind

SERVICE = "inference.GRPCInferenceService"
#: tensorgate's own RPC, JSON bytes in and out (no .proto): `/tensorgate.Feedback/Post`.
FEEDBACK_SERVICE = "tensorgate.Feedback"
_FORWARDED = ("ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics")
#: Health calls anyone may make: no credential is asked for.
_OPEN = frozenset({"ServerLive", "ServerReady", "ModelReady"})
NO_MESSAGE = ("no request message: a unary call carries one complete length-prefixed message "
              "(none came, or the stream ended part-way through it)")

#: A method's handler: its message, the call's context, and the call's metadata (read once).
Handler = Callable[[bytes, Any, Headers], Awaitable[bytes]]
#: A handler also given the caller as admitted on the metadata (None: not asked).
Admitted = Callable[[bytes, Any, Headers, Principal | None], Awaitable[bytes]]
#: What grpc runs: the request stream (read by hand, once admitted) and the context.
Guarded = Callable[[AsyncIterator[bytes], Any], Awaitable[bytes]]
#: The authentication stage, from the metadata alone (`Pipeline.admit` with no model).
Admit = Callable[[Headers, None], Principal]


class GrpcTransport:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.trimmer = memory.Trimmer()

    async def model_infer(self, request: bytes, context: Any, headers: Headers,
                          principal: Principal | None) -> bytes:
        model, version, request_id, timeout = infer_fields(request)
        call = RequestContext(model, version, "grpc", headers, request_id,
                              deadline(timeout, context.time_remaining()),
                              authenticated=principal)
        # NOTE: a large one in parts: the pipeline's rewrites (id, version) then copy only its
        # small fields, and the lane copies its tensors once, into the arena.
        parts = parts_of(request) if len(request) >= SPLIT_FROM_BYTES else request
        return await self.pipeline.infer(call, parts)

    async def model_stream_infer(self, requests: AsyncIterator[bytes], context: Any) -> None:
        """Admitted once on the stream's metadata; each message is then a ModelInfer of its own,
        answered in order, its failure in `error_message` with the stream left open."""
        headers = _headers(context)
        try:
            self.pipeline.admit(headers, None)
        except TensorgateError as exc:
            failure = exc
        else:
            await Stream(self.pipeline, self.trimmer, context, headers).run()
            return
        await context.abort(failure.code, failure.message)

    async def feedback(self, request: bytes, context: Any, headers: Headers) -> bytes:
        """The HTTP body, naming its model: `{"model": "digits", "id": ..., "truth": ...}`."""
        model = _feedback_model(request)
        return encode_result(await handle_feedback(self.pipeline, headers, model, request))

    async def server_live(self, request: bytes, context: Any, headers: Headers) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, request: bytes, context: Any, headers: Headers) -> bytes:
        return pb.ServerReadyResponse(ready=await self.pipeline.ready()).SerializeToString()

    async def server_metadata(self, request: bytes, context: Any, headers: Headers) -> bytes:
        self.pipeline.admit(headers, None)
        answer = pb.ServerMetadataResponse(
            name="tensorgate", version=__version__,
            extensions=await self.pipeline.shared_memory.extensions())
        return answer.SerializeToString()

    async def repository_index(self, request: bytes, context: Any, headers: Headers) -> bytes:
        return await self.pipeline.ask("RepositoryIndex", request, headers=headers,
                                       access="admin")

    async def trace_setting(self, request: bytes, context: Any, headers: Headers) -> bytes:
        """Triton's trace extension: an admin reads or changes the global or a model's settings."""
        message = pb.TraceSettingRequest.FromString(request)
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

    async def log_settings(self, request: bytes, context: Any, headers: Headers) -> bytes:
        """Triton's logging extension: an admin reads or changes the log settings."""
        message = pb.LogSettingsRequest.FromString(request)
        principal = self.pipeline.admit(headers, None, admin=True)
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

        async def handler(request: bytes, context: Any, headers: Headers) -> bytes:
            message = kind.FromString(request)
            # NOTE: checked here and again in each worker, before anything touches the disk.
            model = check_name(message.model_name)
            check_upload(message.parameters.keys() if method == "RepositoryModelLoad" else ())
            return await self.pipeline.broadcast(method, request, model, headers)

        return handler

    def shared_memory(self, kind: Kind, action: str) -> Handler:
        """{System,Cuda}SharedMemory{Status,Register,Unregister}: the caller's regions only."""
        kind_of = getattr(pb, f"{kind}SharedMemory{action}Request")
        answer_of = getattr(pb, f"{kind}SharedMemory{action}Response")

        async def handler(request: bytes, context: Any, headers: Headers) -> bytes:
            message = kind_of.FromString(request)
            regions = self.pipeline.shared_memory
            name = check_name(message.name, "shared memory region name") if message.name else ""
            if action == "Status":
                return bytes((await regions.status(kind, name, headers)).SerializeToString())
            if action == "Register":
                await regions.register(kind, message, headers)
            else:
                await regions.unregister(kind, name, headers)
            return bytes(answer_of().SerializeToString())

        return handler

    def forward(self, method: str) -> Handler:
        """A control-plane RPC whose request names the model in fields 1 and 2."""
        access: Access = "open" if method == "ModelReady" else "key"

        async def handler(request: bytes, context: Any, headers: Headers) -> bytes:
            model, version = model_and_version(request)
            return await self.pipeline.ask(method, request, model, version, headers, access)

        return handler

    def handlers(self) -> grpc.GenericRpcHandler:
        table: dict[str, Handler] = {
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
        table.update({f"{kind}SharedMemory{action}": self.shared_memory(kind, action)
                      for kind in ("System", "Cuda")
                      for action in ("Status", "Register", "Unregister")})
        methods = {name: self._method(fn, None if name in _OPEN else self.pipeline.admit)
                   for name, fn in table.items()}
        # NOTE: authenticated once: the pipeline then only authorizes the model
        methods["ModelInfer"] = grpc.stream_unary_rpc_method_handler(
            _guarded(self.model_infer, self.pipeline.admit, self.trimmer))
        methods["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer)
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def feedback_handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            FEEDBACK_SERVICE, {"Post": self._method(self.feedback, self.pipeline.admit)})

    def _method(self, handler: Handler, admit: Admit | None) -> grpc.RpcMethodHandler:
        # NOTE: stream-unary on purpose: grpc reads a unary call's message (and inflates it)
        # before its handler runs, and leaves a call without one unanswered until its deadline.
        async def plain(request: bytes, context: Any, headers: Headers,
                        principal: Principal | None) -> bytes:
            return await handler(request, context, headers)

        return grpc.stream_unary_rpc_method_handler(_guarded(plain, admit, self.trimmer))


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


def _forget(exc: BaseException) -> None:
    """Drop the locals of every frame an error passed through: they hold the request's bytes,
    which a reference cycle would keep until the next full collection."""
    chain: BaseException | None = exc
    seen: set[int] = set()
    while chain is not None and id(chain) not in seen:  # a chain can be made circular
        seen.add(id(chain))
        traceback.clear_frames(chain.__traceback__)
        chain = chain.__cause__ or chain.__context__


def _guarded(handler: Admitted, admit: Admit | None, trimmer: memory.Trimmer) -> Guarded:
    async def guarded(requests: AsyncIterator[bytes], context: Any) -> bytes:
        """Admit the caller on its metadata, then read the one message and handle it."""
        size = -1  # NOTE: the message's, once read
        request = b""
        try:
            headers = _headers(context)
            principal = admit(headers, None) if admit is not None else None
            request = await context.read()
            if request is grpc.aio.EOF:
                raise invalid_argument(NO_MESSAGE)
            size = len(request)
            return await handler(request, context, headers, principal)
        except TensorgateError as exc:
            _forget(exc)
            failure = exc
            # NOTE: this frame is in the error's traceback, which `failure` keeps in a cycle.
            request = b""
        except Exception as exc:  # grpc logs it and answers UNKNOWN; the bytes go now
            _forget(exc)
            request = b""
            raise
        finally:
            # NOTE: a large message, or a refused one grpc had begun to buffer, leaves freed
            # heap that glibc keeps; the request's bytes are gone by now.
            if size < 0 or size >= memory.TRIM_AFTER_BYTES:
                trimmer.request()
        if failure.retry_after is not None:
            wait = str(max(1, math.ceil(failure.retry_after)))
            context.set_trailing_metadata((("retry-after", wait),))
        # NOTE: outside the except block, so the abort carries no chain of frames.
        await context.abort(failure.code, failure.message)
        raise AssertionError("unreachable: abort raises")

    return guarded
