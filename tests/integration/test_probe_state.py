"""Issue 21's probe against a live gateway: bounded metric labels, policies that name only ready
versions, a registry file deleted under the gateway, and keys that work when created."""

from __future__ import annotations

import http.client
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from common.proto import grpc_service_pb2 as pb
from common.registry import Registry
from common.settings import AuthSettings
from loadtest.loadgen import Load, Target, closed_loop
from loadtest.tools import hint, missing
from tensorgate.lifecycle import sync_repository
from tests.integration.conftest import ROOT, Background
from tests.integration.test_admin_api import Admin
from tests.unit.test_probe_state import series
from tests.waiting import until

#: Requests each kind of caller sends with names of its own choosing.
PROBES = 300
BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32",
                               "data": [0.0] * 64}]}).encode()


class Probe(Admin):
    """The admin test's client, with what the probe rows ask of a live gateway besides."""

    def infer(self, key: str) -> int:
        return self.call("POST", "/v2/models/digits/infer", json.loads(BODY), key)[0]

    def gauge(self) -> float | None:
        return self.servers.metrics.get_sample_value("tensorgate_registry_ok")


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probe]:
    tmp = tmp_path_factory.mktemp("probe")
    repository = tmp / "models"
    shutil.copytree(ROOT / "models" / "digits", repository / "digits")
    shutil.copytree(repository / "digits" / "1", repository / "digits" / "3")
    with Registry(tmp / "registry.db") as registry:
        keys = {"admin": registry.create_key("admin", "admin")[1],
                "user": registry.create_key("user", "infer", ["digits"])[1]}
        sync_repository(registry, repository)
    with Background(repository, auth=AuthSettings(), registry_path=tmp / "registry.db",
                    registry_refresh_s=0.05, model_repository=repository) as servers:
        yield Probe(servers, repository, tmp / "registry.db", keys)


def _send(address: str, model: str, key: str | None) -> int:
    """One request on a connection of its own (http.client waits out a delayed ACK on each
    keep-alive request, 40 ms, which would make this test slow for nothing)."""
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection(address, timeout=30)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=BODY, headers=headers)
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def test_probe_03_names_from_refused_or_unknown_callers_add_no_series(probe: Probe) -> None:
    metrics = probe.servers.metrics
    address = probe.servers.gateway_http
    assert probe.infer("admin") == 200  # digits' own series exist before the count
    before = len(series(metrics))
    statuses = {_send(address, f"zz-{i}", key)
                for key in (None, probe.keys["user"], probe.keys["admin"])
                for i in range(PROBES)}
    statuses |= {_send(address, f"zz{i}" + "x" * 30_000, None) for i in range(20)}
    assert {401, 403, 404} <= statuses
    assert len(series(metrics)) - before <= 120
    labels = {value for _, labels in series(metrics) for _, value in labels}
    assert not any(value.startswith("zz") for value in labels)


@pytest.mark.parametrize(("path", "body", "message"), [
    ("digits/traffic", {"weights": {"7": 100}}, "no ready version '7'; its ready versions: 1, 2"),
    ("digits/traffic", {"weights": {"1": 1}, "shadow": {"version": "9", "percent": 5}},
     "no ready version '9'"),
    ("%2E%2E/traffic", {"weights": {"1": 100}}, "model name must be 1-128 characters"),
    ("a%00b/traffic", {"weights": {"1": 100}}, "model name must be 1-128 characters"),
    ("digits/versions/1/promote", {"to": ".."}, "alias name) must be 1-128"),
])
def test_probe_06_policies_and_aliases_name_only_ready_versions_of_valid_models(
        probe: Probe, path: str, body: Any, message: str) -> None:
    method = "PUT" if path.endswith("traffic") else "POST"
    status, answer = probe.call(method, f"/v2/admin/models/{path}", body)
    assert status == 400 and message in answer["error"], answer
    assert probe.call("GET", "/v2/admin/models/digits/traffic")[0] == 404
    assert probe.infer("user") == 200  # unversioned requests still have somewhere to go


def test_probe_06_a_forced_retire_releases_the_alias_and_the_policy(probe: Probe) -> None:
    assert probe.call("POST", "/v2/admin/models/digits/versions/3/promote",
                      {"to": "canary"})[0] == 200
    assert probe.call("PUT", "/v2/admin/models/digits/traffic",
                      {"weights": {"1": 50, "3": 50}})[0] == 200
    status, retired = probe.call("DELETE", "/v2/admin/models/digits/versions/3?force=true")
    assert (status, retired["state"]) == (200, "retired")
    described = probe.call("GET", "/v2/admin/models/digits")[1]
    assert "canary" not in described["aliases"]
    assert described["traffic"]["weights"] == {"1": 50}
    entries = probe.call("GET", "/v2/admin/audit?model=digits&limit=3")[1]["entries"]
    assert [e["action"] for e in entries] == ["version.retired", "traffic.set", "alias.clear"]
    assert all("retired (forced)" in e["after"]["reason"] for e in entries[1:])
    assert probe.call("DELETE", "/v2/admin/models/digits/traffic")[0] == 200


def test_probe_07_a_version_folder_removed_by_hand_stops_routing(probe: Probe) -> None:
    assert probe.call("POST", "/v2/admin/models/digits/versions/2/promote", {})[0] == 200
    assert probe.call("PUT", "/v2/admin/models/digits/traffic",
                      {"weights": {"1": 1, "2": 1}})[0] == 200
    shutil.rmtree(probe.repository / "digits" / "2")

    def released() -> bool:
        described = probe.call("GET", "/v2/admin/models/digits")[1]
        return "production" not in described["aliases"] and described["traffic"] is not None \
            and described["traffic"]["weights"] == {"1": 1}

    until(released, "version 2 released by the gateway")
    versions = {v["version"]: v for v in probe.call("GET", "/v2/admin/models/digits")[1][
        "versions"]}
    assert versions["2"]["state"] == "failed" and "is gone" in versions["2"]["reason"]
    entries = probe.call("GET", "/v2/admin/audit?model=digits&limit=3")[1]["entries"]
    assert {e["action"] for e in entries} == {"version.failed", "traffic.set", "alias.clear"}
    until(lambda: probe.infer("user") == 200, "unversioned requests answered")
    assert probe.call("DELETE", "/v2/admin/models/digits/traffic")[0] == 200


def test_probe_19_a_key_created_over_http_works_on_the_next_request(probe: Probe) -> None:
    for i in range(5):
        status, created = probe.call("POST", "/v2/admin/keys",
                                     {"name": f"fresh-{i}", "role": "infer"})
        assert status == 201
        probe.keys[f"fresh-{i}"] = created["secret"]
        assert probe.call("GET", "/v2/models/digits", key=f"fresh-{i}")[0] == 200


def test_probe_19_the_load_generator_sends_its_key_over_grpc(probe: Probe) -> None:
    # The policy bench sends an API key as gRPC metadata: without it every call would be
    # "missing credential", an HTTP 200 whose trailers h2load does not read.
    if missing("h2load"):
        pytest.skip(hint("h2load"))
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.zeros((1, 64), "<f4").tobytes())
    body = request.SerializeToString()
    key = (("Authorization", f"Bearer {probe.keys['user']}"),)
    method = "/inference.GRPCInferenceService/ModelInfer"
    address = probe.servers.gateway_grpc
    answer = probe_answer_size(address, method, body, key)
    outcome = closed_loop(Target("grpc", address, method, body, key, answer),
                          Load(2, 1, 0.0, 0.5), dict)
    assert outcome.errors == 0 and outcome.answered > 0, outcome
    unkeyed = closed_loop(Target("grpc", address, method, body, (), answer),
                          Load(2, 1, 0.0, 0.5), dict)
    assert unkeyed.answered == 0 and unkeyed.errors > 0, unkeyed


def probe_answer_size(address: str, method: str, body: bytes,
                      key: tuple[tuple[str, str], ...]) -> int:
    """The wire size of a good answer (gRPC's 5-byte prefix and the message)."""
    with grpc.insecure_channel(address) as channel:
        metadata = tuple((name.lower(), value) for name, value in key)
        return len(channel.unary_unary(method)(body, metadata=metadata, timeout=30)) + 5


def test_probe_07_a_registry_file_moved_away_is_refused_until_it_is_back(probe: Probe) -> None:
    path, kept = probe.registry_path, probe.registry_path.with_suffix(".kept")
    until(lambda: probe.gauge() == 1.0, "the registry gauge at 1")
    os.replace(path, kept)
    try:
        for method, route, body in (("GET", "keys", None), ("DELETE", "keys/user", None),
                                    ("POST", "keys", {"name": "late", "role": "infer"})):
            status, answer = probe.call(method, f"/v2/admin/{route}", body)
            assert status == 503 and "was deleted" in answer["error"], answer
        until(lambda: probe.gauge() == 0.0, "the registry gauge fallen to 0")
        assert probe.infer("user") == 200  # the last good snapshot still serves
        assert not path.exists()  # nothing re-created it
    finally:
        os.replace(kept, path)
    until(lambda: probe.gauge() == 1.0, "the registry gauge back at 1")
    status, listed = probe.call("GET", "/v2/admin/keys")
    assert status == 200 and "user" in [k["name"] for k in listed["keys"]]
