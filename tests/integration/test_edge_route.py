"""The edge-bundle download: built by the injected builder off the loop, streamed as .tar.gz."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from common.policy import ANONYMOUS, Principal
from common.registry import Registry
from common.settings import AuthSettings, GatewaySettings
from gateway.app import Gateway
from gateway.http_server import HttpTransport
from gateway.openapi import EDGE_TARGETS
from gateway.pipeline import Pipeline
from tensorgate.edge.source import TARGETS
from tensorgate.roles import edge_builder
from tests.integration import conftest
from tests.integration.conftest import ROOT, Background, Servers


@dataclass
class Edge:
    servers: Servers
    keys: dict[str, str]

    def get(self, path: str, key: str | None = "user") -> tuple[int, dict[str, str], bytes]:
        headers = {} if key is None else {"authorization": f"Bearer {self.keys[key]}"}
        request = urllib.request.Request(f"http://{self.servers.gateway_http}{path}",
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("edge-route")
    repository = tmp / "models"
    shutil.copytree(ROOT / "models" / "digits", repository / "digits")
    registry_path = tmp / "registry.db"
    with Registry(registry_path) as registry:
        keys = {"user": registry.create_key("user", "infer", ["digits"])[1],
                "other": registry.create_key("other", "infer", ["resnet*"])[1]}
    settings = GatewaySettings(model_repository=repository, registry_path=registry_path)
    # NOTE: Background builds its Gateway without an edge builder; inject the one `serve` uses.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conftest, "Gateway",
                      functools.partial(Gateway, edge=edge_builder(settings)))
        with Background(repository, auth=AuthSettings(), registry_path=registry_path,
                        model_repository=repository) as servers:
            yield Edge(servers, keys)


def test_a_key_for_the_model_downloads_a_verified_bundle(edge: Edge) -> None:
    status, headers, body = edge.get("/v2/models/digits/versions/1/edge?target=onnx")
    assert status == 200, body[:200]
    assert headers["content-type"] == "application/gzip"
    assert int(headers["content-length"]) == len(body)
    disposition = headers["content-disposition"]
    assert disposition.startswith('attachment; filename="digits-1-onnx-')
    assert disposition.endswith('.tar.gz"')
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as bundle:
        names = bundle.getnames()
        member = next(n for n in names if n.endswith("manifest.json"))
        extracted = bundle.extractfile(member)
        assert extracted is not None
        manifest = json.loads(extracted.read())
    assert any(n.endswith(".onnx") for n in names)
    assert (manifest["name"], manifest["target"]) == ("digits", "onnx")
    # The second request is served from the cache: the very same bytes.
    assert edge.get("/v2/models/digits/versions/1/edge?target=onnx")[2] == body


@pytest.mark.parametrize(("path", "key", "status", "message"), [
    ("/v2/models/digits/versions/1/edge?target=onnx", None, 401, "missing credential"),
    ("/v2/models/digits/versions/1/edge?target=onnx", "other", 403,
     "may not use model 'digits'"),
    ("/v2/models/digits/versions/1/edge", "user", 400, "name the edge target"),
    ("/v2/models/digits/versions/1/edge?target=tflite", "user", 400,
     "unknown edge target 'tflite'"),
    ("/v2/models/digits/versions/one/edge?target=onnx", "user", 400,
     "built for a version number"),
    ("/v2/models/digits/versions/9/edge?target=onnx", "user", 404, "9"),
])
def test_refusals_say_why(edge: Edge, path: str, key: str | None, status: int,
                          message: str) -> None:
    got, headers, body = edge.get(path, key)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert message in json.loads(body)["error"]


class _OpenPipeline:
    """What the transport needs of a pipeline for these routes: an admit that lets all in."""

    def admit(self, headers: Any, model: str | None, admin: bool = False) -> Principal:
        return ANONYMOUS


def _transport(builder: Any = None) -> HttpTransport:
    return HttpTransport(cast(Pipeline, _OpenPipeline()), 1 << 20, edge=builder)


def test_a_gateway_without_a_builder_answers_404() -> None:
    status, body = asyncio.run(_get(_transport(), "/v2/models/digits/versions/1/edge",
                                    b"target=onnx"))
    assert status == 404
    assert "no local model repository" in json.loads(body)["error"]


async def _get(transport: HttpTransport, path: str, query: bytes) -> tuple[int, bytes]:
    """One GET straight through the transport's ASGI app."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": query,
             "headers": []}
    await transport(scope, receive, send)
    return messages[0]["status"], b"".join(m.get("body", b"") for m in messages[1:])


def test_a_large_bundle_streams_in_chunks_with_its_length(tmp_path: Path) -> None:
    bundle = tmp_path / "big model.tar.gz"
    bundle.write_bytes(bytes(range(256)) * (3 * 4096 + 7))  # 3 MiB and a bit
    asked: list[tuple[str, int, str]] = []

    def builder(model: str, version: int, target: str) -> Path:
        asked.append((model, version, target))
        return bundle

    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v2/models/m/versions/2/edge",
             "query_string": b"target=onnx-int8", "headers": []}
    asyncio.run(_transport(builder)(scope, receive, send))
    assert asked == [("m", 2, "onnx-int8")]
    start, *chunks = messages
    headers = dict(start["headers"])
    assert start["status"] == 200
    assert headers[b"content-length"] == str(bundle.stat().st_size).encode()
    assert headers[b"content-disposition"] == b'attachment; filename="big_model.tar.gz"'
    assert len(chunks) >= 4 and not chunks[-1].get("more_body")
    assert b"".join(c["body"] for c in chunks) == bundle.read_bytes()


def test_the_openapi_targets_are_the_exporter_s() -> None:
    assert EDGE_TARGETS == TARGETS
