"""Triton's metric names from a live `tensorgate serve`: a dashboard written for them renders,
the counters mean what Triton's mean, perf_analyzer --collect-metrics reads them, and
--no-triton-metrics turns them off.

No GPU is needed: the server runs with a stand-in `pynvml` module first on its PYTHONPATH (one
GPU, fixed readings), so the nv_gpu_* series come through the real collector and listener;
tests/unit/test_runtime_metrics.py reads a real GPU where there is one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from prometheus_client.parser import text_string_to_metric_families

from loadtest.locust.local import ROOT, Served, free_port, serve
from tests.integration.promql import Scrape, evaluate
from tests.waiting import until

DASHBOARD = ROOT / "deploy" / "grafana" / "triton.json"
UUID = "GPU-11111111-2222-3333-4444-555555555555"
FAKE_NVML = f'''
"""A stand-in NVML: one GPU, fixed readings."""
from types import SimpleNamespace

class NVMLError(Exception):
    pass

def nvmlInit():
    return None

def nvmlDeviceGetCount():
    return 1

def nvmlDeviceGetHandleByIndex(index):
    return index

def nvmlDeviceGetUtilizationRates(handle):
    return SimpleNamespace(gpu=37, memory=5)

def nvmlDeviceGetMemoryInfo(handle):
    return SimpleNamespace(used=3 * 2**30, total=80 * 2**30, free=77 * 2**30)

def nvmlDeviceGetUUID(handle):
    return "{UUID}"

def nvmlDeviceGetPowerUsage(handle):
    return 123_500

def nvmlDeviceGetPowerManagementLimit(handle):
    return 700_000
'''


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    folder = tmp_path_factory.mktemp("nvml")
    (folder / "pynvml.py").write_text(FAKE_NVML)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join([str(folder), str(ROOT)]))
        yield


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, fake_nvml: None) -> Iterator[Served]:
    registry = tmp_path_factory.mktemp("triton") / "r.db"
    with serve(registry, "--threads", "1", "--gateway-processes", "1",
               metrics_port=free_port()) as served:
        yield served


def scrape(served: Served) -> Scrape:
    at = time.monotonic()
    text = urllib.request.urlopen(f"http://{served.metrics}/metrics", timeout=10).read()
    return Scrape(at, {(s.name, frozenset(s.labels.items())): s.value
                       for family in text_string_to_metric_families(text.decode())
                       for s in family.samples})


def settled(served: Served) -> Scrape:
    """A scrape once Triton's counters (carried over each second) have caught up with the
    statistics extension, which counts as requests finish."""
    stats = thttp.InferenceServerClient(served.http).get_inference_statistics("digits")
    want = {s["version"]: s["inference_stats"]["success"]["count"] for s in stats["model_stats"]}
    have: dict[str, float | None] = {}

    def caught_up() -> Scrape | None:
        found = scrape(served)
        have.update({v: found.samples.get(("nv_inference_request_success", frozenset(
            {"model": "digits", "version": v}.items()))) for v in want})
        return found if have == want else None

    return until(caught_up, "the counters caught up", every_s=0.1,
                 on_timeout=lambda: f"counters {have}, statistics {want}")


def infer(served: Served, version: str, rows: int, times: int) -> None:
    x = np.random.default_rng(0).random((rows, 64), dtype=np.float32)
    client = tgrpc.InferenceServerClient(served.grpc)
    for _ in range(times):
        tensor = tgrpc.InferInput("INPUT0", [rows, 64], "FP32")
        tensor.set_data_from_numpy(x)
        assert client.infer("digits", [tensor], model_version=version).as_numpy("OUTPUT0") \
            is not None


def value(found: Scrape, name: str, **labels: str) -> float:
    return found.samples[name, frozenset(labels.items())]


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            if panel["type"] != "row" for target in panel["targets"]]


def test_every_panel_of_the_triton_dashboard_renders(live: Served) -> None:
    infer(live, "2", 2, 3)
    first = settled(live)
    infer(live, "2", 3, 4)
    infer(live, "1", 1, 2)
    second = settled(live)
    queries = panel_queries()
    assert len(queries) >= 10
    assert all("tensorgate_" not in expr for _, expr in queries)  # Triton's names only
    everything = {"model": ".*", "version": ".*", "__rate_interval": "1m"}
    for title, expr in queries:
        result = evaluate(expr, first, second, everything)
        finite = [v for v in result.values() if math.isfinite(v)]
        assert finite, f"{title}: {expr} yields no finite series ({result})"
        if not title.startswith(("Failed", "Pending")):  # nothing failed or waited: 0 is right
            assert max(finite) > 0, f"{title}: {expr} yields only zeros ({result})"
    batch = evaluate(queries[[t for t, _ in queries].index(
        "Batch efficiency (inferences per execution)")][1], first, second,
        {**everything, "version": "2"})
    assert list(batch.values()) == [pytest.approx(3.0)]  # 4 requests of 3 rows, one at a time
    picked = evaluate(queries[0][1], first, second, {**everything, "version": "1"})
    assert {dict(k)["version"] for k in picked} == {"1"}  # the template variables select


def test_counters_mean_what_triton_means(live: Served) -> None:
    before = settled(live)
    infer(live, "1", 4, 5)
    after = settled(live)
    v1 = {"model": "digits", "version": "1"}

    def grew(name: str) -> float:
        return value(after, name, **v1) - value(before, name, **v1)

    assert grew("nv_inference_request_success") == 5
    assert grew("nv_inference_count") == 20  # rows, not requests
    assert 1 <= grew("nv_inference_exec_count") <= 5
    spent = {part: grew(f"nv_inference_{part}_duration_us")
             for part in ("request", "queue", "compute_input", "compute_infer",
                          "compute_output")}
    assert all(us > 0 for us in spent.values()), spent
    # each request's duration holds its queueing and its batch's compute (µs, cumulative)
    assert spent["request"] >= spent["queue"] + spent["compute_infer"]
    assert spent["request"] < 5 * 60e6
    stats = thttp.InferenceServerClient(live.http).get_inference_statistics("digits", "1")
    ours = stats["model_stats"][0]["inference_stats"]
    assert value(after, "nv_inference_request_success", **v1) == ours["success"]["count"]
    assert value(after, "nv_inference_queue_duration_us", **v1) == \
        pytest.approx(ours["queue"]["ns"] / 1000, abs=1)
    assert value(after, "nv_inference_pending_request_count", **v1) == 0
    assert value(after, "nv_gpu_memory_total_bytes", gpu_uuid=UUID) == 80 * 2**30


def test_series_carry_only_triton_labels_of_served_models(live: Served) -> None:
    tensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(Exception, match="nv_no_such_model"):
        tgrpc.InferenceServerClient(live.grpc).infer("nv_no_such_model", [tensor])
    found = scrape(live)
    names = {name for name, _ in found.samples if name.startswith("nv_")}
    assert "nv_inference_request_failure" in names and "nv_gpu_utilization" in names
    assert not [n for n in names if n.endswith(("_total", "_created"))]
    for name, labels in found.samples:
        if name.startswith("nv_inference"):
            assert dict(labels)["model"] == "digits", (name, labels)
            assert set(dict(labels)) <= {"model", "version", "reason"}
        elif name.startswith("nv_gpu"):
            assert dict(labels) == {"gpu_uuid": UUID}
    reasons = {dict(labels)["reason"] for name, labels in found.samples
               if name == "nv_inference_request_failure"}
    assert reasons == {"REJECTED", "CANCELED", "BACKEND", "OTHER"}
    text = urllib.request.urlopen(f"http://{live.metrics}/metrics", timeout=10).read().decode()
    # whole numbers whole, as Triton writes them (perf_analyzer reads these as integers)
    assert f'nv_gpu_memory_total_bytes{{gpu_uuid="{UUID}"}} {80 * 2**30}\n' in text


def perf_analyzer() -> str:
    found = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")
    if not found:
        pytest.skip("perf_analyzer not found: put it on PATH or name it in PERF_ANALYZER "
                    "(pip install perf-analyzer)")
    return found


def test_perf_analyzer_collects_the_metrics(live: Served, tmp_path: Path) -> None:
    tool = perf_analyzer()
    report = tmp_path / "pa.csv"
    run = subprocess.run(
        [tool, "-m", "digits", "-u", live.grpc, "-i", "grpc", "--collect-metrics",
         "--metrics-url", f"http://{live.metrics}/metrics", "--metrics-interval", "200",
         "--measurement-mode", "count_windows", "--measurement-request-count", "50",
         "--stability-percentage", "999", "--max-trials", "3", "--concurrency-range", "1",
         "-f", str(report), "--verbose-csv"],
        capture_output=True, text=True, timeout=300, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "Unable to parse" not in output, output
    row = next(csv.DictReader(report.open()))
    assert row["Avg GPU Utilization"] == f"{UUID}:0.37;"
    assert row["Avg GPU Power Usage"] == f"{UUID}:123.5;"
    assert row["Max GPU Memory Usage"] == f"{UUID}:{3 * 2**30};"
    assert row["Total GPU Memory"] == f"{UUID}:{80 * 2**30};"
    assert float(row["Server Compute Infer"]) > 0


def test_no_triton_metrics_turns_them_off(tmp_path: Path, fake_nvml: None) -> None:
    with serve(tmp_path / "r.db", "--threads", "1", "--gateway-processes", "1",
               "--no-triton-metrics", metrics_port=free_port()) as served:
        infer(served, "1", 1, 1)
        found = scrape(served)
    names = {name for name, _ in found.samples}
    assert "tensorgate_runtime_inferences_total" in names
    assert "tensorgate_gpu_utilization_ratio" in names
    assert not [n for n in names if n.startswith("nv_")]
