"""The gateway's HTTP transport: a bare ASGI app that answers the infer fast path itself
(`POST /v2/models/{m}[/versions/{v}]/infer`) and hands every other path to the control plane."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson

from common.arena import Arena
from common.errors import TensorgateError, invalid_argument
from common.names import check_name, check_version, is_whole
from common.wire import Buffer
from gateway.admin_api import AdminApi
from gateway.context import Headers, RequestContext
from gateway.control import Control, build_control
from gateway.edge import EdgeBuilder
from gateway.http_body import Body
from gateway.http_codec import (
    OutputPrefs,
    Raw,
    decode_infer_answer,
    encode_infer_parts,
)
from gateway.http_layouts import Layouts
from gateway.pipeline import Pipeline
from gateway.request_parts import Request

#: An answer: its status, its body as parts (written as they are), its headers but the length.
Reply = tuple[int, list[Raw], list[tuple[bytes, bytes]]]
#: Reads an infer request's body, once the pipeline admitted its caller: given its headers,
#: the whole body, inflated.
ReadBody = Callable[[Headers], Awaitable[Buffer]]
_JSON = [(b"content-type", b"application/json")]
_HEADER_LENGTH = "inference-header-content-length"
#: The version that served an inference, for callers split between versions.
VERSION_HEADER = b"x-tensorgate-model-version"
#: Headers that decide who calls and how the body is read. Sent twice, which one counts is
#: ambiguous (a proxy in front may have checked the other), so such a request is refused.
SINGLE_HEADERS = frozenset({"authorization", "content-length", "content-encoding",
                            _HEADER_LENGTH})


def _json(status: int, payload: Any) -> Reply:
    return status, [orjson.dumps(payload)], _JSON


def error_reply(exc: TensorgateError) -> Reply:
    """The answer to a refused call: the error table's status, the message, Retry-After."""
    status, payload, extra = _json(exc.http_status, {"error": exc.message})
    if exc.retry_after is not None:
        wait = max(1, math.ceil(exc.retry_after))
        extra = [*extra, (b"retry-after", b"%d" % wait)]
    return status, payload, extra


def infer_target(method: str, path: str) -> tuple[str, str] | None:
    """(model, version or "" for the policy's) when this is an infer call, else None: a few
    string comparisons."""
    if method != "POST" or not path.startswith("/v2/models/"):
        return None
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[3] == "infer":
        return parts[2], ""
    if len(parts) == 6 and parts[3] == "versions" and parts[5] == "infer":
        return parts[2], check_version(parts[4])  # NOTE: an empty version is refused, not latest
    return None


class HttpTransport:
    """ASGI entry point: infer here, on the measured path; every other path to `control`.
    gateway/http_protocol.py calls `answer` itself for infer, without ASGI."""

    def __init__(self, pipeline: Pipeline, max_body_bytes: int, admin: AdminApi | None = None,
                 edge: EdgeBuilder | None = None, arena: Arena | None = None) -> None:
        self.pipeline = pipeline
        self.max_body = max_body_bytes
        #: The lane arena that large infer bodies are written into as they arrive (or None).
        self.arena = arena
        self.layouts = Layouts()
        #: The control plane: every path but infer (gateway/control.py, gateway/routes).
        self.control = build_control(Control(pipeline, admin or AdminApi(None), edge,
                                             max_body_bytes))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        try:
            target = infer_target(scope["method"], scope["path"])
            if target is None:
                scope["tensorgate.headers"] = _headers(scope["headers"])
                await self.control(scope, receive, send)
                return
        except TensorgateError as exc:
            await _send(send, *error_reply(exc))
            return

        def read(headers: Headers) -> Awaitable[bytes]:
            return Body(receive, headers, self.max_body).read()

        await _send(send, *await self.answer(target, scope["headers"], read))

    async def answer(self, target: tuple[str, str], raw_headers: list[tuple[bytes, bytes]],
                     read: ReadBody) -> Reply:
        """An infer call's answer, or its refusal's (never raises TensorgateError)."""
        try:
            headers = _headers(raw_headers)
            # NOTE: read only after auth: a refused caller costs its headers.
            return await self.infer(check_name(target[0]), target[1], headers, read)
        except TensorgateError as exc:
            return error_reply(exc)

    async def infer(self, model: str, version: str, headers: Headers, read: ReadBody) -> Reply:
        prefs = OutputPrefs()

        async def load(call: RequestContext) -> Request:
            """Called by the pipeline once the caller is admitted on its headers alone; the
            tensors stay views of the body until the lane copies them where they go."""
            nonlocal prefs
            length = headers.get(_HEADER_LENGTH)
            if length is not None and not is_whole(length):
                raise invalid_argument("Inference-Header-Content-Length must be a whole number")
            decoded = self.layouts.decode(await read(headers), int(length) if length else None,
                                          model, version)
            call.id, call.timeout_s, prefs = decoded.request_id, decoded.timeout_s, decoded.prefs
            return decoded.request

        answer = await self.pipeline.infer(RequestContext(model, version, "http", headers), load)
        response, raws = decode_infer_answer(answer)
        payload, json_length = encode_infer_parts(response, prefs, raws)
        served = (VERSION_HEADER, response.model_version.encode())
        served_id = (b"x-request-id", response.id.encode())
        if json_length is None:
            return 200, payload, [*_JSON, served, served_id]
        return 200, payload, [(b"content-type", b"application/octet-stream"),
                              (_HEADER_LENGTH.encode(), str(json_length).encode()), served,
                              served_id]


async def _send(send: Callable, status: int, parts: list[Raw],
                extra: list[tuple[bytes, bytes]]) -> None:
    payload = parts[0] if len(parts) == 1 else b"".join(parts)
    # NOTE: with a Content-Length the server need not chunk the body.
    answer = [*extra, (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": answer})
    await send({"type": "http.response.body", "body": bytes(payload)})


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's headers by lower-case name; one of SINGLE_HEADERS sent twice is refused."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}
    if len(headers) == len(raw):
        return headers
    names = [k.decode("latin-1") for k, _ in raw]
    for name in SINGLE_HEADERS:
        if names.count(name) > 1:
            error = TensorgateError(
                grpc.StatusCode.UNAUTHENTICATED if name == "authorization"
                else grpc.StatusCode.INVALID_ARGUMENT,
                f"header '{name}' sent {names.count(name)} times: send it once")
            raise error
    return headers
