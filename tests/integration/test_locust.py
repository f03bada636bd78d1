"""Locust headless against a live `tensorgate serve`: a clean run passes its SLO gate and writes
its reports; a broken SLO, a split that does not match the policy, or a missing key fails it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.locust import payloads, slo
from loadtest.locust.local import ROOT, Served, locust_argv, serve


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    registry = tmp_path_factory.mktemp("locust") / "r.db"
    with serve(registry, "--threads", "1", "--gateway-processes", "1") as served:
        yield served


@pytest.fixture(scope="module")
def live_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str]]:
    registry = tmp_path_factory.mktemp("locust-auth") / "r.db"
    with serve(registry, "--threads", "1", "--gateway-processes", "1", auth=True) as served:
        yield served, registry.with_suffix(".admin-key").read_text().strip()


def run(served: Served, out: Path, run_time: str, *extra: str,
        key: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TENSORGATE_API_KEY"}
    if key is not None:
        env["TENSORGATE_API_KEY"] = key
    return subprocess.run(locust_argv(served, out, 2, run_time, "--only-summary", *extra),
                          cwd=ROOT, capture_output=True, text=True, timeout=90, env=env)


def test_probe_14_without_a_key_locust_exits_at_once_saying_how_to_pass_one(
        live_with_auth: tuple[Served, str], tmp_path: Path) -> None:
    # Before: "SLO not met: error rate 1.0000", then a hang at exit that ignored SIGTERM
    # (subprocess.run's timeout would fail this test).
    served, _ = live_with_auth
    done = run(served, tmp_path, "30s", "--tags", "steady", "--max-error-rate", "0.001")
    log = done.stdout + done.stderr
    assert done.returncode == 2, log
    assert "refused a call without a key (HTTP 401" in log
    assert "--api-key KEY or the TENSORGATE_API_KEY environment variable" in log
    assert "All users spawned" not in log  # stopped before the users started


def test_probe_14_with_the_key_a_run_against_an_auth_on_server_meets_its_slo(
        live_with_auth: tuple[Served, str], tmp_path: Path) -> None:
    served, key = live_with_auth
    done = run(served, tmp_path, "2s", "--tags", "steady", "--max-error-rate", "0", key=key)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "SLOs met" in log


def test_a_steady_run_over_both_protocols_meets_its_slo_and_writes_reports(
        live: Served, tmp_path: Path) -> None:
    done = run(live, tmp_path, "5s", "--tags", "steady", "--p99-ms", "5000",
               "--max-error-rate", "0")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "SLOs met" in log
    stats = (tmp_path / "tensorgate_stats.csv").read_text()
    rows = {line.split(",")[1]: line.split(",") for line in stats.splitlines()[1:]}
    for name in ("grpc digits", "http digits json", "http digits binary"):
        assert int(rows[name][2]) > 0, stats  # requests
        assert int(rows[name][3]) == 0, stats  # failures
    assert int(rows["Aggregated"][3]) == 0
    assert "<html" in (tmp_path / "report.html").read_text()[:2000].lower()


def test_a_missed_slo_and_a_wrong_split_fail_the_run(live: Served, tmp_path: Path) -> None:
    # Nothing answers in 1 µs, and with no traffic policy version 2 (the newest) serves all.
    done = run(live, tmp_path, "2s", "--tags", "ab", "--p99-ms", "0.001",
               "--ab-policy", "1=50,2=50")
    log = done.stdout + done.stderr
    assert done.returncode == 1, log
    assert "p99 latency" in log
    assert "version 1 served 0.000" in log


def test_inputs_follow_the_metadata_for_any_signature() -> None:
    specs = payloads.specs({"inputs": [
        {"name": "ids", "datatype": "INT64", "shape": ["-1", "-1"]},
        {"name": "text", "datatype": "BYTES", "shape": [-1]},
        {"name": "image", "datatype": "FP16", "shape": [3, 4]}]})
    built = payloads.build(specs, batch=2)
    assert [g.shape() for g in built.grpc_inputs] == [[2, 1], [2], [3, 4]]
    assert [g.datatype() for g in built.grpc_inputs] == ["INT64", "BYTES", "FP16"]
    assert built.binary_body.startswith(b'{"inputs"')
    assert b'"text"' in built.json_body


def test_slo_split_and_profile_rules() -> None:
    assert slo.slo_violations(50, 0.01, 40, 1000, 10) == []
    assert len(slo.slo_violations(50, 0.01, 60, 1000, 11)) == 2
    assert slo.slo_violations(0, -1, 1e9, 0, 0) == []
    assert slo.parse_policy("1=90, 2=10") == {"1": 0.9, "2": 0.1}
    with pytest.raises(ValueError, match="VERSION=WEIGHT"):
        slo.parse_policy("1:90")
    assert slo.split_violations({"1": 0.9, "2": 0.1}, {"1": 880, "2": 120}, 0.05) == []
    assert slo.split_violations({"1": 0.9, "2": 0.1}, {"1": 700, "2": 300}, 0.05)
    assert [slo.users_at("ramp", t, 10, 10) for t in (0, 5, 10)] == [1, 5, 10]
    assert [slo.users_at("spike", t, 10, 10) for t in (1, 5, 9)] == [2, 10, 2]
    assert slo.users_at("steady", 3, 10, 7) == 7
