"""The control plane's app behind the transport: unknown paths, wrong methods and its errors."""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import Any

import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from fastapi import APIRouter, Request

from gateway import control
from tests.integration.conftest import Servers

#: The extensions that work today, which Server Metadata must list over both protocols.
WORKING = {"binary_tensor_data", "model_configuration", "model_repository", "schedule_policy",
           "statistics"}


def _ask(servers: Servers, method: str, path: str) -> tuple[int, dict, dict]:
    connection = http.client.HTTPConnection(servers.gateway_http, timeout=60)
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read() or b"{}"), dict(answer.getheaders())
    finally:
        connection.close()


def test_an_unknown_path_is_404_with_an_error_body(servers: Servers) -> None:
    status, body, _ = _ask(servers, "GET", "/v2/no/such/thing")
    assert status == 404 and body == {"error": "no such path: GET /v2/no/such/thing"}
    status, body, _ = _ask(servers, "GET", "/nowhere")
    assert status == 404 and "error" in body


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v2/health/live", "GET"),
    ("GET", "/v2/models/digits/infer", "POST"),
    ("GET", "/v2/models/digits/versions/1/infer", "POST"),
    ("PUT", "/v2/admin/keys", "GET, POST"),
    ("POST", "/v2/models/digits/config", "GET"),
])
def test_a_wrong_method_on_a_known_path_is_405_with_allow(servers: Servers, method: str,
                                                          path: str, allowed: str) -> None:
    status, body, headers = _ask(servers, method, path)
    assert status == 405, body
    assert sorted(headers["allow"].split(", ")) == sorted(allowed.split(", "))
    assert f"{method} {path}" in body["error"] and allowed.split(", ")[0] in body["error"]


def test_server_metadata_lists_every_working_extension(servers: Servers) -> None:
    http = thttp.InferenceServerClient(servers.gateway_http).get_server_metadata()
    grpc_ = tgrpc.InferenceServerClient(servers.gateway_grpc).get_server_metadata(as_json=True)
    assert set(http["extensions"]) >= WORKING and set(grpc_["extensions"]) >= WORKING
    assert http["extensions"] == grpc_["extensions"]


def test_the_control_plane_answers_beside_the_infer_path(servers: Servers) -> None:
    """Moved routes keep their answers: health, metadata, config, the document."""
    assert _ask(servers, "GET", "/v2/health/live")[:2] == (200, {"live": True})
    status, body, _ = _ask(servers, "GET", "/v2/models/digits")
    assert status == 200 and body["name"] == "digits" and body["inputs"]
    status, body, _ = _ask(servers, "GET", "/v2/models/digits/versions/1/ready")
    assert (status, body) == (200, {"ready": True})
    status, body, _ = _ask(servers, "GET", "/v2/models/digits/versions/x/config")
    assert status == 400 and "version must be a whole number" in body["error"]
    status, body, _ = _ask(servers, "GET", "/v2/openapi.json")
    assert status == 200 and "/v2/models/{model_name}/infer" in body["paths"]


def test_the_infer_path_checks_the_name_and_version_it_routes_by(servers: Servers) -> None:
    status, body, _ = _ask(servers, "POST", "/v2/models/digits/versions//infer")
    assert status == 400 and "version must be a whole number" in body["error"]
    status, body, _ = _ask(servers, "POST", "/v2/models/no%20such/infer")
    assert status == 400 and "model name must be" in body["error"]


def test_a_declared_route_answers_405_with_allow_for_another_method() -> None:
    router = APIRouter()

    @router.get("/probe/{name}")
    async def probe(name: str, request: Request) -> dict[str, str]:
        return {"name": name}

    app = control.build_control(None, [router])  # type: ignore[arg-type]
    status, body, _ = asyncio.run(_call(app, "GET", "/probe/x"))
    assert status == 200 and json.loads(body) == {"name": "x"}
    status, body, headers = asyncio.run(_call(app, "POST", "/probe/x"))
    assert status == 405 and headers[b"allow"] == b"GET"
    assert "error" in json.loads(body)


async def _call(app: Any, method: str, path: str) -> tuple[int, bytes, dict[bytes, bytes]]:
    """One request straight through an ASGI app."""
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http",
             "root_path": "", "server": ("127.0.0.1", 0), "client": ("127.0.0.1", 1),
             "tensorgate.headers": {}}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], body, dict(start["headers"])
