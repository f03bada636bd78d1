"""The gateway's HTTP transport: a bare ASGI app for the OIP REST paths; decode, call, encode."""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson

from common import EXTENSIONS, __version__
from common.errors import TensorgateError, invalid_argument, not_found
from common.names import check_name, check_version, is_version, shown
from common.proto import grpc_service_pb2 as pb
from common.uploads import check_upload
from gateway.admin_api import AdminApi, Call
from gateway.control import Control, build_control
from gateway.edge import EdgeBuilder
from gateway.feedback import encode_result, handle_feedback
from gateway.http_body import Body
from gateway.http_codec import (
    OutputPrefs,
    decode_infer_request,
    encode_infer_response,
    message_to_json,
)
from gateway.openapi import document_bytes
from gateway.pipeline import Headers, Pipeline

#: A body is bytes, or a file to stream (an edge bundle) without reading it whole.
Reply = tuple[int, bytes | Path, list[tuple[bytes, bytes]]]
AdminOperation = Callable[[AdminApi, Call], Awaitable[dict[str, Any]]]
_JSON = [(b"content-type", b"application/json")]
_HEADER_LENGTH = "inference-header-content-length"
#: The version that served an inference, for callers split between versions.
VERSION_HEADER = b"x-tensorgate-model-version"
_FILE_CHUNK = 1 << 20
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9_.-]")
#: Headers that decide who calls and how the body is read. Sent twice, which one counts is
#: ambiguous (a proxy in front may have checked the other), so such a request is refused.
SINGLE_HEADERS = frozenset({"authorization", "content-length", "content-encoding",
                            _HEADER_LENGTH})

#: The admin API: (method, path under /v2/admin with {parameters}, operation, success status).
ADMIN_ROUTES: list[tuple[str, list[str], AdminOperation, int]] = [
    (method, path.split("/"), operation, status) for method, path, operation, status in (
        ("GET", "models", AdminApi.models, 200),
        ("GET", "models/{model}", AdminApi.describe, 200),
        ("POST", "models/{model}/versions/{version}/promote", AdminApi.promote, 200),
        ("POST", "models/{model}/rollback", AdminApi.rollback, 200),
        ("DELETE", "models/{model}/versions/{version}", AdminApi.retire, 200),
        ("GET", "models/{model}/traffic", AdminApi.traffic, 200),
        ("PUT", "models/{model}/traffic", AdminApi.set_traffic, 200),
        ("DELETE", "models/{model}/traffic", AdminApi.clear_traffic, 200),
        ("GET", "keys", AdminApi.keys, 200),
        ("POST", "keys", AdminApi.create_key, 201),
        ("DELETE", "keys/{name}", AdminApi.revoke_key, 200),
        ("GET", "audit", AdminApi.audit, 200),
    )]


class _Unrouted(Exception):
    """A path this transport does not route: the control plane's app answers it."""


def _json(status: int, payload: Any) -> Reply:
    return status, orjson.dumps(payload), _JSON


def _whole(text: str) -> bool:
    """A whole number in ASCII digits (str.isdigit also takes '²', which int() refuses)."""
    return text.isascii() and text.isdigit()


class HttpTransport:
    """ASGI entry point. Routes by path segments; every handler returns (status, body, headers)."""

    def __init__(self, pipeline: Pipeline, max_body_bytes: int, admin: AdminApi | None = None,
                 edge: EdgeBuilder | None = None) -> None:
        self.pipeline = pipeline
        self.max_body = max_body_bytes
        self.admin_api = admin or AdminApi(None)
        #: Builds edge bundles (blocking: run in a thread); None: this gateway serves none.
        self.edge = edge
        #: Every path the transport does not route itself.
        self.control = build_control(Control(pipeline, self.admin_api, edge, max_body_bytes))
        self.model_handlers: dict[tuple[str, str], Callable[..., Awaitable[Reply]]] = {
            ("POST", "infer"): self.infer,
            ("GET", ""): self.metadata,
            ("GET", "ready"): self.model_ready,
            ("GET", "config"): self.config,
            ("GET", "stats"): self.statistics_of,
            ("POST", "feedback"): self.feedback,
        }

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        try:
            headers = _headers(scope["headers"])
            # NOTE: read only by the handler, after its auth: a refused caller costs its headers.
            body = Body(receive, headers, self.max_body)
            status, payload, extra = await self.route(scope["method"], scope["path"], headers, body,
                                                      scope.get("query_string", b""))
        except _Unrouted:
            scope["tensorgate.headers"] = headers
            await self.control(scope, receive, send)
            return
        except TensorgateError as exc:
            status, payload, extra = _json(exc.http_status, {"error": exc.message})
            if exc.retry_after is not None:
                wait = max(1, math.ceil(exc.retry_after))
                extra = [*extra, (b"retry-after", b"%d" % wait)]
        await _send(send, status, payload, extra)

    async def route(self, method: str, path: str, headers: Headers, body: Body,
                    query: bytes = b"") -> Reply:
        parts = path.strip("/").split("/")
        if parts[0] != "v2":
            raise _Unrouted
        rest = parts[1:]
        if not rest and method == "GET":
            self.pipeline.admit(headers, None)
            return _json(200, {"name": "tensorgate", "version": __version__,
                               "extensions": EXTENSIONS})
        if rest == ["health", "live"]:
            return _json(200, {"live": True})
        if rest == ["health", "ready"]:
            ready = await self.pipeline.ready()
            return _json(200 if ready else 503, {"ready": ready})
        if rest == ["repository", "index"] and method == "POST":
            return await self.index(headers, body)
        if (len(rest) == 4 and rest[:2] == ["repository", "models"] and method == "POST"
                and rest[3] in ("load", "unload")):
            return await self.repository_change(check_name(rest[2]), rest[3], headers, body)
        if rest == ["models", "stats"]:
            return await self.statistics("", "", headers)
        if rest == ["openapi.json"] and method == "GET":
            return 200, document_bytes(), _JSON
        if rest and rest[0] == "admin":
            return await self.admin(method, rest[1:], headers, body, query)
        if (len(rest) == 5 and rest[0] == "models" and rest[2] == "versions"
                and rest[4] == "edge" and method == "GET"):
            return await self.edge_bundle(rest[1], rest[3], headers, query)
        if len(rest) >= 2 and rest[0] == "models":
            return await self.model_route(method, rest[1:], headers, body)
        raise _Unrouted

    async def model_route(self, method: str, rest: list[str], headers: Headers,
                          body: Body) -> Reply:
        model, version, tail = rest[0], "", rest[1:]
        if len(tail) >= 2 and tail[0] == "versions":
            version, tail = check_version(tail[1]), tail[2:]
        action = tail[0] if len(tail) == 1 else "" if not tail else "?"
        handler = self.model_handlers.get((method, action))
        if handler is None:
            raise _Unrouted
        return await handler(check_name(model), version, headers, body)

    async def admin(self, method: str, rest: list[str], headers: Headers, body: Body,
                    query: bytes) -> Reply:
        """The admin API: find the route, admit an admin, hand the call to AdminApi."""
        for verb, pattern, operation, status in ADMIN_ROUTES:
            params = _match(pattern, rest)
            if params is None or verb != method:
                continue
            principal = self.pipeline.admit(headers, None, admin=True)
            _check_parameters(params)
            call = Call(principal.subject, params, _query(query), _json_body(await body.read()))
            return _json(status, await operation(self.admin_api, call))
        raise _Unrouted

    async def edge_bundle(self, model: str, version: str, headers: Headers,
                          query: bytes) -> Reply:
        """A version's edge bundle (.tar.gz), built (or found cached) off the event loop."""
        self.pipeline.admit(headers, check_name(model))
        if self.edge is None:
            raise not_found("this gateway builds no edge bundles: it has no local model "
                            "repository (--model-repository)")
        if not is_version(version):
            raise invalid_argument(f"edge bundles are built for a version number, got "
                                   f"{shown(version)}")
        target = _query(query).get("target")
        if not target:
            raise invalid_argument("name the edge target: ?target=onnx, onnx-fp16, onnx-int8 "
                                   "or ort")
        path = await asyncio.to_thread(self.edge, model, int(version), target)
        filename = _UNSAFE_FILENAME.sub("_", path.name)
        return 200, path, [(b"content-type", b"application/gzip"),
                           (b"content-disposition", f'attachment; filename="{filename}"'.encode())]

    async def infer(self, model: str, version: str, headers: Headers, body: Body) -> Reply:
        prefs = OutputPrefs()

        async def load() -> tuple[bytes, str, float | None]:
            """Called by the pipeline once the caller is admitted on its headers alone."""
            nonlocal prefs
            length = headers.get(_HEADER_LENGTH)
            if length is not None and not _whole(length):
                raise invalid_argument("Inference-Header-Content-Length must be a whole number")
            request, prefs = decode_infer_request(await body.read(),
                                                  int(length) if length else None, model, version)
            return request.SerializeToString(), request.id, _timeout_s(request)

        answer = await self.pipeline.infer(load, model, version, None, "http", headers)
        response = pb.ModelInferResponse.FromString(answer)
        payload, json_length = encode_infer_response(response, prefs)
        served = (VERSION_HEADER, response.model_version.encode())
        served_id = (b"x-request-id", response.id.encode())
        if json_length is None:
            return 200, payload, [*_JSON, served, served_id]
        return 200, payload, [(b"content-type", b"application/octet-stream"),
                              (_HEADER_LENGTH.encode(), str(json_length).encode()), served,
                              served_id]

    async def feedback(self, model: str, version: str, headers: Headers, body: Body) -> Reply:
        """The ground truth of earlier requests, by id: `{"id": ..., "truth": ...}` or many."""
        result = await handle_feedback(self.pipeline, headers, model, body.read)
        return 200, encode_result(result), _JSON

    async def metadata(self, model: str, version: str, headers: Headers, _: Body) -> Reply:
        request = pb.ModelMetadataRequest(name=model, version=version)
        answer = await self.pipeline.ask("ModelMetadata", request.SerializeToString(), model,
                                         version, headers)
        return _json(200, message_to_json(pb.ModelMetadataResponse.FromString(answer)))

    async def model_ready(self, model: str, version: str, *_: Any) -> Reply:
        request = pb.ModelReadyRequest(name=model, version=version)
        answer = await self.pipeline.ask("ModelReady", request.SerializeToString(), model,
                                         version, access="open")
        ready = pb.ModelReadyResponse.FromString(answer).ready
        return _json(200 if ready else 400, {"ready": ready})

    async def config(self, model: str, version: str, headers: Headers, _: Body) -> Reply:
        request = pb.ModelConfigRequest(name=model, version=version)
        answer = await self.pipeline.ask("ModelConfig", request.SerializeToString(), model,
                                         version, headers)
        return _json(200, message_to_json(pb.ModelConfigResponse.FromString(answer).config))

    async def statistics_of(self, model: str, version: str, headers: Headers, _: Body) -> Reply:
        return await self.statistics(model, version, headers)

    async def statistics(self, model: str, version: str, headers: Headers) -> Reply:
        request = pb.ModelStatisticsRequest(name=model, version=version)
        answer = await self.pipeline.ask("ModelStatistics", request.SerializeToString(), model,
                                         version, headers)
        return _json(200, message_to_json(pb.ModelStatisticsResponse.FromString(answer)))

    async def repository_change(self, model: str, action: str, headers: Headers,
                                body: Body) -> Reply:
        """Triton's load / unload: `{"parameters": {"config": "<JSON>", "file:1/model.onnx":
        "<base64>"}}`; the body may be empty."""
        check_name(model)  # checked here and again in each worker, before any disk write
        self.pipeline.admit(headers, None, admin=True)  # NOTE: before reading the body
        params = _load_parameters(await body.read())
        check_upload(params.keys() if action == "load" else ())
        if action == "load":
            load = pb.RepositoryModelLoadRequest(model_name=model)
            for key, value in params.items():
                _set_parameter(load.parameters[key], key, value)
            await self.pipeline.broadcast("RepositoryModelLoad", load.SerializeToString(), model,
                                          headers)
        else:
            unload = pb.RepositoryModelUnloadRequest(model_name=model)
            await self.pipeline.broadcast("RepositoryModelUnload", unload.SerializeToString(),
                                          model, headers)
        return 200, b"", _JSON

    async def index(self, headers: Headers, body: Body) -> Reply:
        self.pipeline.admit(headers, None, admin=True)  # NOTE: before reading the body
        text = await body.read()
        try:
            params = orjson.loads(text) if text.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise invalid_argument(f"repository index body is not valid JSON: {exc}") from None
        ready = bool(params.get("ready", False)) if isinstance(params, dict) else False
        request = pb.RepositoryIndexRequest(ready=ready)
        answer = await self.pipeline.ask("RepositoryIndex", request.SerializeToString(),
                                         headers=headers, access="admin")
        models = message_to_json(pb.RepositoryIndexResponse.FromString(answer))["models"]
        return _json(200, models)


async def _send(send: Callable, status: int, payload: bytes | Path,
                extra: list[tuple[bytes, bytes]]) -> None:
    """One response; a file goes out in chunks, read off the event loop."""
    if isinstance(payload, bytes):
        # NOTE: with a Content-Length the server need not chunk the body.
        answer = [*extra, (b"content-length", b"%d" % len(payload))]
        await send({"type": "http.response.start", "status": status, "headers": answer})
        await send({"type": "http.response.body", "body": payload})
        return
    with payload.open("rb") as file:
        size = os.fstat(file.fileno()).st_size  # the file opened, even if renamed over since
        answer = [*extra, (b"content-length", b"%d" % size)]
        await send({"type": "http.response.start", "status": status, "headers": answer})
        while chunk := await asyncio.to_thread(file.read, _FILE_CHUNK):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


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


def _match(pattern: list[str], parts: list[str]) -> dict[str, str] | None:
    """The {parameters} of a route pattern when the path's segments fit it, else None."""
    if len(pattern) != len(parts):
        return None
    params = {}
    for expected, part in zip(pattern, parts):
        if expected.startswith("{"):
            if not part:
                return None
            params[expected[1:-1]] = part
        elif expected != part:
            return None
    return params


def _check_parameters(params: dict[str, str]) -> None:
    """The names and versions an admin path carries follow the one naming rule."""
    for key, value in params.items():
        if key == "version":
            check_version(value)
        else:
            check_name(value, "key name" if key == "name" else "model name")


def _query(query: bytes) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True))


def _json_body(body: bytes) -> Any:
    """An admin request's JSON document; an empty body is None."""
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_argument(f"request body is not valid JSON: {exc}") from None


def _timeout_s(request: pb.ModelInferRequest) -> float | None:
    """Triton's `timeout` request parameter (microseconds) as the request's deadline."""
    if "timeout" not in request.parameters:
        return None
    value = request.parameters["timeout"]
    if value.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param") or (
            value.int64_param or value.uint64_param) <= 0:
        raise invalid_argument("parameter 'timeout': expected a positive whole number of "
                               "microseconds")
    return (value.int64_param or value.uint64_param) / 1e6


def _load_parameters(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise invalid_argument(f"load/unload body is not valid JSON: {exc}") from None
    params = document.get("parameters", {}) if isinstance(document, dict) else None
    if not isinstance(params, dict):
        raise invalid_argument('expected a body like {"parameters": {"config": "..."}}')
    return params


def _set_parameter(target: Any, key: str, value: Any) -> None:
    """One load parameter: files arrive base64-encoded, the rest as JSON scalars."""
    if key.startswith("file:"):
        if not isinstance(value, str):
            raise invalid_argument(f"parameter '{key}': expected the file's content in base64")
        try:
            target.bytes_param = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise invalid_argument(f"parameter '{key}': not valid base64") from None
    elif isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise invalid_argument(f"parameter '{key}': {value} does not fit in 64 bits")
        target.int64_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        raise invalid_argument(f"parameter '{key}': expected a string, integer or boolean")
