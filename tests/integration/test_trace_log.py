"""The trace and logging extensions through tritonclient, HTTP and gRPC, on an auth-on gateway."""

from __future__ import annotations

import json
import logging
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tritonclient.utils import InferenceServerException

from common import logs, tracing
from common.registry import Registry
from common.settings import AuthSettings
from gateway import trace_log
from loadtest.locust.local import serve
from tensorgate.lifecycle import sync_repository
from tests.integration.conftest import ROOT, Background, Servers
from tests.waiting import until

PROTOCOLS = ("http", "grpc")


@dataclass
class Gateway:
    servers: Servers
    keys: dict[str, str]
    registry: Path

    def client(self, protocol: str) -> Any:
        if protocol == "http":
            return thttp.InferenceServerClient(self.servers.gateway_http)
        return tgrpc.InferenceServerClient(self.servers.gateway_grpc)

    def auth(self, key: str = "admin") -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[key]}"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("trace_log")
    repository = tmp / "models"
    shutil.copytree(ROOT / "models" / "digits", repository / "digits")
    with Registry(tmp / "registry.db") as registry:
        keys = {"admin": registry.create_key("trace-admin", "admin")[1],
                "user": registry.create_key("trace-user", "infer", ["digits"])[1]}
        sync_repository(registry, repository)
    with Background(repository, auth=AuthSettings(), registry_path=tmp / "registry.db",
                    registry_refresh_s=0.05, model_repository=repository) as servers:
        yield Gateway(servers, keys, tmp / "registry.db")


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    """Each test starts from the defaults and leaves them behind (the settings are per process)."""
    level = logs.level()
    yield
    for model in list(trace_log.TRACE.own):
        trace_log.TRACE.update(dict.fromkeys(trace_log.DEFAULTS), model)
    trace_log.TRACE.update(dict.fromkeys(trace_log.DEFAULTS))
    logs.set_level(level)


def trace_settings(gateway: Gateway, protocol: str, model: str | None = None,
                   update: dict[str, Any] | None = None, key: str = "admin") -> dict[str, Any]:
    """The answer as one shape for both protocols: HTTP's (lists for levels, strings else)."""
    client = gateway.client(protocol)
    headers = gateway.auth(key)
    if protocol == "http":
        if update is None:
            answer: dict[str, Any] = client.get_trace_settings(model, headers=headers)
            return answer
        return dict(client.update_trace_settings(model, update, headers=headers))
    if update is None:
        raw = client.get_trace_settings(model, headers=headers, as_json=True)
    else:
        raw = client.update_trace_settings(model, update, headers=headers, as_json=True)
    return {name: value["value"] if name == "trace_level" else value["value"][0]
            for name, value in raw["settings"].items()}


def log_settings(gateway: Gateway, protocol: str, update: dict[str, Any] | None = None,
                 key: str = "admin") -> dict[str, Any]:
    client = gateway.client(protocol)
    headers = gateway.auth(key)
    if protocol == "http":
        answer = (client.get_log_settings(headers=headers) if update is None
                  else client.update_log_settings(update, headers=headers))
        return dict(answer)
    raw = (client.get_log_settings(headers=headers, as_json=True) if update is None
           else client.update_log_settings(update, headers=headers, as_json=True))
    return {name: next(iter(value.values())) for name, value in raw["settings"].items()}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_trace_settings_global_and_per_model(gateway: Gateway, protocol: str) -> None:
    default = trace_settings(gateway, protocol)
    assert default == {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1",
                       "log_frequency": "0", "trace_file": "", "trace_mode": "opentelemetry"}
    assert trace_settings(gateway, protocol, "digits") == default
    changed = trace_settings(gateway, protocol, "digits",
                             {"trace_level": ["OFF"], "trace_rate": "7"})
    assert (changed["trace_level"], changed["trace_rate"]) == (["OFF"], "7")
    assert trace_settings(gateway, protocol, "digits") == changed
    assert trace_settings(gateway, protocol) == default
    glob = trace_settings(gateway, protocol, update={"trace_count": "5"})
    assert glob["trace_count"] == "5"
    assert trace_settings(gateway, protocol, "digits")["trace_count"] == "5"
    cleared = trace_settings(gateway, protocol, "digits", {"trace_level": None,
                                                           "trace_rate": None})
    assert cleared == trace_settings(gateway, protocol) == glob


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_trace_settings_refused_by_name(gateway: Gateway, protocol: str) -> None:
    refused = [({"trace_file": "/tmp/trace.json"}, "trace_file"),
               ({"trace_level": ["TIMESTAMPS", "TENSORS"]}, "TENSORS"),
               ({"trace_rate": "0"}, "trace_rate"), ({"log_frequency": "10"}, "log_frequency"),
               ({"trace_mode": "triton"}, "trace_mode"), ({"sampling": "1"}, "sampling")]
    for update, named in refused:
        with pytest.raises(InferenceServerException, match=named):
            trace_settings(gateway, protocol, update=update)
    with pytest.raises(InferenceServerException, match="not served"):
        trace_settings(gateway, protocol, "nope")
    with pytest.raises(InferenceServerException, match="model name"):
        trace_settings(gateway, protocol, "-bad", {"trace_rate": "2"})
    assert trace_log.TRACE.own == {}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_log_settings_change_the_log_level(gateway: Gateway, protocol: str) -> None:
    logs.set_level(logging.INFO)
    assert log_settings(gateway, protocol) == {
        "log_file": "", "log_info": True, "log_warning": True, "log_error": True,
        "log_verbose_level": 0, "log_format": "default"}
    verbose = log_settings(gateway, protocol, {"log_verbose_level": 1})
    assert verbose["log_verbose_level"] == 1
    assert logging.getLogger("tensorgate.gateway").isEnabledFor(logging.DEBUG)
    quiet = log_settings(gateway, protocol, {"log_verbose_level": 0, "log_info": False})
    assert (quiet["log_info"], quiet["log_warning"]) == (False, True)
    assert not logging.getLogger("tensorgate.gateway").isEnabledFor(logging.INFO)
    assert logging.getLogger("tensorgate.gateway").isEnabledFor(logging.WARNING)
    for update, named in [({"log_file": "/tmp/log"}, "log_file"),
                          ({"log_format": "ISO8601"}, "log_format"),
                          ({"log_error": False}, "threshold")]:
        with pytest.raises(InferenceServerException, match=named):
            log_settings(gateway, protocol, update)
    assert logs.level() == logging.WARNING


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_admin_key_is_needed(gateway: Gateway, protocol: str) -> None:
    logs.set_level(logging.INFO)
    for call in (lambda: trace_settings(gateway, protocol, key="user"),
                 lambda: trace_settings(gateway, protocol, update={"trace_rate": "3"},
                                        key="user"),
                 lambda: trace_settings(gateway, protocol, "digits", key="user"),
                 lambda: log_settings(gateway, protocol, key="user"),
                 lambda: log_settings(gateway, protocol, {"log_info": False}, key="user")):
        with pytest.raises(InferenceServerException, match="admin role"):
            call()
    assert trace_log.TRACE.shown()["trace_rate"] == "1" and logs.level() == logging.INFO


def post(gateway: Gateway, path: str, body: bytes, key: str | None = "admin") -> tuple[int, str]:
    headers = {"content-type": "application/json"} | (gateway.auth(key) if key else {})
    request = urllib.request.Request(f"http://{gateway.servers.gateway_http}{path}", data=body,
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())["trace_rate"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]


def test_http_bodies_are_checked_after_the_caller(gateway: Gateway) -> None:
    status, error = post(gateway, "/v2/trace/setting", b"not json", key=None)
    assert status == 401 and "credential" in error
    for path, body, named in [("/v2/trace/setting", b"not json", "JSON"),
                              ("/v2/trace/setting", b'["trace_rate"]', "object"),
                              ("/v2/trace/setting", b'{"trace_rate": 1.5}', "trace_rate"),
                              ("/v2/logging", b'{"log_info": "yes"}', "log_info"),
                              ("/v2/models/nope/trace/setting", b"{}", "not served")]:
        status, error = post(gateway, path, body)
        assert (status, named in error) == (404 if "nope" in path else 400, True), error
    assert post(gateway, "/v2/models/digits/trace/setting", b'{"trace_rate": 3}') == (200, "3")


def infer(gateway: Gateway, protocol: str) -> None:
    module: Any = thttp if protocol == "http" else tgrpc
    tensor = module.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.full((1, 64), 0.5, np.float32))
    gateway.client(protocol).infer("digits", [tensor], headers=gateway.auth("user"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_trace_level_and_count_decide_what_is_sampled(gateway: Gateway, protocol: str) -> None:
    exporter = InMemorySpanExporter()
    tracing.setup(exporter, "test")
    try:
        trace_settings(gateway, protocol, "digits", {"trace_level": ["OFF"]})
        infer(gateway, protocol)
        assert exporter.get_finished_spans() == ()
        trace_settings(gateway, protocol, "digits",
                       {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "1"})
        infer(gateway, protocol)
        infer(gateway, protocol)
        names = [span.name for span in exporter.get_finished_spans()]
        assert names.count("infer digits") == names.count("runtime") == 1, names
        assert trace_settings(gateway, protocol, "digits")["trace_count"] == "0"
    finally:
        tracing.setup(None, "test")


def eventually(check: Callable[[], bool], ceiling_s: float = 30.0) -> None:
    """Wait for `check` to hold (the registry is polled every 50 ms here), within a ceiling."""
    until(check, "the registry's settings adopted", ceiling_s)


def test_settings_reach_every_gateway_process_through_the_registry(gateway: Gateway) -> None:
    trace_settings(gateway, "http", "digits", {"trace_rate": "9"})
    log_settings(gateway, "grpc", {"log_info": False})
    with Registry(gateway.registry, create=False) as registry:
        stored = registry.snapshot().settings
    assert json.loads(stored["trace"])["models"] == {"digits": {"trace_rate": 9}}
    assert json.loads(stored["logging"]) == {"level": logging.WARNING}
    # another gateway process's change: written to the registry, adopted here
    with Registry(gateway.registry, create=False) as registry:
        registry.set_setting("trace", {"global": {"trace_level": "OFF", "trace_rate": 4,
                                                  "trace_count": -1}, "models": {}}, "other")
        registry.set_setting("logging", {"level": logging.ERROR}, "other")
    eventually(lambda: trace_settings(gateway, "grpc")["trace_level"] == ["OFF"])
    assert trace_settings(gateway, "http", "digits")["trace_rate"] == "4"
    eventually(lambda: logs.level() == logging.ERROR)
    assert log_settings(gateway, "http")["log_warning"] is False


def test_a_change_reaches_every_process_of_serve(tmp_path: Path) -> None:
    """Under `tensorgate serve` a POST reaches one gateway process; every fresh connection (spread
    over the processes by SO_REUSEPORT) must come to see the change."""
    with serve(tmp_path / "registry.db", "--threads", "1", "--gateway-processes", "2") as served:
        thttp.InferenceServerClient(served.http).update_trace_settings(
            settings={"trace_rate": "42"})
        tgrpc.InferenceServerClient(served.grpc).update_log_settings({"log_info": False})

        def everywhere() -> bool:
            seen = [(thttp.InferenceServerClient(served.http).get_trace_settings()["trace_rate"],
                     thttp.InferenceServerClient(served.http).get_log_settings()["log_info"])
                    for _ in range(8)]
            return all(pair == ("42", False) for pair in seen)

        eventually(everywhere, ceiling_s=60)
