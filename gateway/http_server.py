"""The gateway's HTTP transport: a bare ASGI app for the OIP REST paths; decode, call, encode."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from common import EXTENSIONS, __version__
from common.errors import TensorgateError, invalid_argument, not_found
from common.proto import grpc_service_pb2 as pb
from gateway.http_codec import decode_infer_request, encode_infer_response, message_to_json
from gateway.pipeline import Pipeline

Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]
_JSON = [(b"content-type", b"application/json")]
_HEADER_LENGTH = b"inference-header-content-length"


def _json(status: int, payload: Any) -> Reply:
    return status, orjson.dumps(payload), _JSON


class HttpTransport:
    """ASGI entry point. Routes by path segments; every handler returns (status, body, headers)."""

    def __init__(self, pipeline: Pipeline, max_body_bytes: int) -> None:
        self.pipeline = pipeline
        self.max_body = max_body_bytes
        self.model_handlers: dict[tuple[str, str], Callable[..., Awaitable[Reply]]] = {
            ("POST", "infer"): self.infer,
            ("GET", ""): self.metadata,
            ("GET", "ready"): self.model_ready,
            ("GET", "config"): self.config,
            ("GET", "stats"): self.statistics_of,
        }

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        try:
            headers = dict(scope["headers"])
            body = await self._body(receive, headers)
            status, payload, extra = await self.route(scope["method"], scope["path"], headers, body)
        except TensorgateError as exc:
            status, payload, extra = _json(exc.http_status, {"error": exc.message})
        # NOTE: with a Content-Length the server need not chunk the body.
        answer = [*extra, (b"content-length", b"%d" % len(payload))]
        await send({"type": "http.response.start", "status": status, "headers": answer})
        await send({"type": "http.response.body", "body": payload})

    async def _body(self, receive: Callable, headers: dict[bytes, bytes]) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise invalid_argument(f"request body of {int(declared)} bytes exceeds "
                                           f"the limit of {self.max_body}")
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise invalid_argument(f"request body exceeds the limit of "
                                               f"{self.max_body} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = headers.get(b"content-encoding", b"identity")
        if encoding in (b"gzip", b"deflate"):
            try:
                body = zlib.decompress(body, 31 if encoding == b"gzip" else 15)
            except zlib.error as exc:
                raise invalid_argument(f"body is not valid {encoding.decode()}: {exc}") from None
        return body

    async def route(self, method: str, path: str, headers: dict[bytes, bytes],
                    body: bytes) -> Reply:
        parts = path.strip("/").split("/")
        if parts[0] != "v2":
            raise not_found(f"no such path: {path}")
        rest = parts[1:]
        if not rest and method == "GET":
            return _json(200, {"name": "tensorgate", "version": __version__,
                               "extensions": EXTENSIONS})
        if rest == ["health", "live"]:
            return _json(200, {"live": True})
        if rest == ["health", "ready"]:
            ready = await self.pipeline.ready()
            return _json(200 if ready else 503, {"ready": ready})
        if rest == ["repository", "index"] and method == "POST":
            return await self.index(body)
        if rest == ["models", "stats"]:
            return await self.statistics("", "")
        if len(rest) >= 2 and rest[0] == "models":
            return await self.model_route(method, rest[1:], headers, body)
        raise not_found(f"no such path: {path}")

    async def model_route(self, method: str, rest: list[str], headers: dict[bytes, bytes],
                          body: bytes) -> Reply:
        model, version, tail = rest[0], "", rest[1:]
        if len(tail) >= 2 and tail[0] == "versions":
            version, tail = tail[1], tail[2:]
        action = tail[0] if len(tail) == 1 else "" if not tail else "?"
        handler = self.model_handlers.get((method, action))
        if handler is None:
            raise not_found(f"no such path: {method} /v2/models/{'/'.join(rest)}")
        return await handler(model, version, headers, body)

    async def infer(self, model: str, version: str, headers: dict[bytes, bytes],
                    body: bytes) -> Reply:
        length = headers.get(_HEADER_LENGTH)
        if length is not None and not length.isdigit():
            raise invalid_argument("Inference-Header-Content-Length must be a whole number")
        request, prefs = decode_infer_request(body, int(length) if length else None, model,
                                              version)
        answer = await self.pipeline.infer(request.SerializeToString(), model, version, None,
                                           "http")
        payload, json_length = encode_infer_response(pb.ModelInferResponse.FromString(answer),
                                                     prefs)
        if json_length is None:
            return 200, payload, _JSON
        return 200, payload, [(b"content-type", b"application/octet-stream"),
                              (_HEADER_LENGTH, str(json_length).encode())]

    async def metadata(self, model: str, version: str, *_: Any) -> Reply:
        request = pb.ModelMetadataRequest(name=model, version=version)
        answer = await self.pipeline.ask("ModelMetadata", request.SerializeToString(), model,
                                         version)
        return _json(200, message_to_json(pb.ModelMetadataResponse.FromString(answer)))

    async def model_ready(self, model: str, version: str, *_: Any) -> Reply:
        request = pb.ModelReadyRequest(name=model, version=version)
        answer = await self.pipeline.ask("ModelReady", request.SerializeToString(), model,
                                         version)
        ready = pb.ModelReadyResponse.FromString(answer).ready
        return _json(200 if ready else 400, {"ready": ready})

    async def config(self, model: str, version: str, *_: Any) -> Reply:
        request = pb.ModelConfigRequest(name=model, version=version)
        answer = await self.pipeline.ask("ModelConfig", request.SerializeToString(), model,
                                         version)
        return _json(200, message_to_json(pb.ModelConfigResponse.FromString(answer).config))

    async def statistics_of(self, model: str, version: str, *_: Any) -> Reply:
        return await self.statistics(model, version)

    async def statistics(self, model: str, version: str) -> Reply:
        request = pb.ModelStatisticsRequest(name=model, version=version)
        answer = await self.pipeline.ask("ModelStatistics", request.SerializeToString(), model,
                                         version)
        return _json(200, message_to_json(pb.ModelStatisticsResponse.FromString(answer)))

    async def index(self, body: bytes) -> Reply:
        try:
            params = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise invalid_argument(f"repository index body is not valid JSON: {exc}") from None
        ready = bool(params.get("ready", False)) if isinstance(params, dict) else False
        request = pb.RepositoryIndexRequest(ready=ready)
        answer = await self.pipeline.ask("RepositoryIndex", request.SerializeToString())
        models = message_to_json(pb.RepositoryIndexResponse.FromString(answer))["models"]
        return _json(200, models)
