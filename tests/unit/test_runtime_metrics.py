"""Runtime metrics: agreement with the statistics extension, NVML through a fake, dead workers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from common.errors import TensorgateError
from runtime import metrics as rm
from runtime.metrics_http import whole_numbers
from runtime.scheduler import Scheduler
from runtime.stats import ModelStats
from runtime.triton_metrics import REASONS, TritonNames
from tests.unit.test_scheduler import FakeBackend, request, served
from tests.waiting import polled_async, until_async


def samples(registry: Any) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


async def test_counts_agree_with_the_statistics_and_the_queue_empties() -> None:
    registry = CollectorRegistry()
    metrics = rm.RuntimeMetrics(registry)
    backend = FakeBackend()
    backend.gate.clear()
    model = served(backend)
    scheduler = Scheduler(model, metrics=metrics.model("m", "1"))
    scheduler.start()
    first = asyncio.ensure_future(scheduler.infer(request(1, 1.0), None))
    await until_async(lambda: backend.running == 1, "the first batch held at the gate")
    rest = [asyncio.ensure_future(scheduler.infer(request(r, 1.0), None)) for r in (1, 2, 3)]
    queued = await polled_async(lambda: value(
        samples(registry), "tensorgate_runtime_queue_depth", model="m", version="1") == 3)
    backend.gate.set()
    await asyncio.gather(first, *rest)
    await scheduler.stop()
    found = samples(registry)
    labels = {"model": "m", "version": "1"}
    assert queued, "the other three requests never showed in the queue depth"
    assert value(found, "tensorgate_runtime_queue_depth", **labels) == 0
    assert value(found, "tensorgate_runtime_executions_total", **labels) == \
        model.stats.execution_count == 2
    assert value(found, "tensorgate_runtime_inferences_total", **labels) == \
        model.stats.inference_count == 7
    assert value(found, "tensorgate_runtime_batch_size_sum", **labels) == 7
    assert value(found, "tensorgate_runtime_batch_size_bucket", le="1.0", **labels) == 1
    assert value(found, "tensorgate_runtime_queue_duration_seconds_count", **labels) == 4
    assert value(found, "tensorgate_runtime_request_duration_seconds_count", **labels) == 4
    assert value(found, "tensorgate_runtime_compute_duration_seconds_count", **labels) == 2


def test_a_version_is_in_one_state_at_a_time() -> None:
    registry = CollectorRegistry()
    metrics = rm.RuntimeMetrics(registry)
    metrics.set_state("m", "2", "LOADING")
    metrics.set_state("m", "2", "READY")
    found = samples(registry)
    states = {s: value(found, "tensorgate_model_state", model="m", version="2", state=s)
              for s in rm.STATES}
    assert states == {"LOADING": 0, "READY": 1, "UNAVAILABLE": 0}


class FakeNvml:
    """The few pynvml calls the collector makes; GPU `broken` raises like a lost device."""

    class NVMLError(Exception):
        pass

    def __init__(self, count: int = 2, broken: int | None = None, starts: bool = True) -> None:
        self.count, self.broken, self.starts = count, broken, starts

    def nvmlInit(self) -> None:
        if not self.starts:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index == self.broken:
            raise self.NVMLError("GPU is lost")
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=40 + handle, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=(handle + 1) * 2**30, total=80 * 2**30, free=0)

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle:08d}-fake".encode()  # bytes, as older pynvml returns

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if handle == 2:
            raise self.NVMLError("Not Supported")
        return 250_000 + handle  # milliwatts

    def nvmlDeviceGetPowerManagementLimit(self, handle: int) -> int:
        return 700_000


def test_gpu_metrics_come_from_nvml_and_a_lost_gpu_is_skipped() -> None:
    collector = rm.gpu_collector(FakeNvml(count=3, broken=1), env={})
    assert collector is not None
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    found = samples(registry)
    assert value(found, "tensorgate_gpu_utilization_ratio", gpu="0") == pytest.approx(0.40)
    assert value(found, "tensorgate_gpu_utilization_ratio", gpu="2") == pytest.approx(0.42)
    assert value(found, "tensorgate_gpu_memory_used_bytes", gpu="2") == 3 * 2**30
    assert value(found, "tensorgate_gpu_memory_total_bytes", gpu="0") == 80 * 2**30
    assert value(found, "tensorgate_gpu_utilization_ratio", gpu="1") is None


def test_no_gpu_collector_without_nvml_or_a_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    assert rm.gpu_collector() is None
    assert rm.gpu_collector(FakeNvml(starts=False), env={}) is None
    assert rm.gpu_collector(FakeNvml(count=0), env={}) is None
    assert rm.gpu_collector(FakeNvml(), env={"CUDA_VISIBLE_DEVICES": ""}) is None
    only = rm.gpu_collector(FakeNvml(count=4), env={"CUDA_VISIBLE_DEVICES": "2,7"})
    assert only is not None and only.indices == [2]


WORKER = """
from prometheus_client import Counter, Gauge
Gauge("tensorgate_t_depth", "d", multiprocess_mode="livesum").set(5)
Counter("tensorgate_t_done", "d").inc(3)
"""


def test_a_dead_worker_keeps_its_counts_but_not_its_live_gauges(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", WORKER], env=env, check=True)
    assert list(tmp_path.glob("gauge_livesum_*.db"))
    found = samples(rm.serving_registry(str(tmp_path), gpu=False))
    assert value(found, "tensorgate_t_done_total") == 3
    assert value(found, "tensorgate_t_depth") is None
    assert not list(tmp_path.glob("gauge_livesum_*.db"))


def test_a_single_process_serves_the_default_registry() -> None:
    rm.default_metrics().set_state("single", "1", "READY")
    found = samples(rm.serving_registry(None, gpu=False))
    assert value(found, "tensorgate_model_state", model="single", version="1",
                 state="READY") == 1


def test_triton_gpu_gauges_are_labelled_by_uuid_in_triton_units() -> None:
    collector = rm.gpu_collector(FakeNvml(count=3, broken=1), env={})
    assert collector is not None
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    found = samples(registry)
    first, third = {"gpu_uuid": "GPU-00000000-fake"}, {"gpu_uuid": "GPU-00000002-fake"}
    assert value(found, "nv_gpu_utilization", **third) == pytest.approx(0.42)
    assert value(found, "nv_gpu_memory_used_bytes", **third) == 3 * 2**30
    assert value(found, "nv_gpu_memory_total_bytes", **first) == 80 * 2**30
    assert value(found, "nv_gpu_power_usage", **first) == pytest.approx(250.0)
    assert value(found, "nv_gpu_power_limit", **first) == pytest.approx(700.0)
    # a GPU that does not report power has no power series, but its other gauges
    assert value(found, "nv_gpu_power_usage", **third) is None
    assert {labels for name, labels in found if name.startswith("nv_gpu")} == \
        {tuple(first.items()), tuple(third.items())}


def test_no_triton_gpu_gauges_when_turned_off() -> None:
    collector = rm.gpu_collector(FakeNvml(), env={}, triton=False)
    assert collector is not None
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    names = {name for name, _ in samples(registry)}
    assert "tensorgate_gpu_utilization_ratio" in names
    assert not {n for n in names if n.startswith("nv_")}


def test_the_real_nvml_reports_triton_gpu_gauges() -> None:
    pynvml = pytest.importorskip("pynvml")
    collector = rm.gpu_collector(pynvml)
    if collector is None:
        pytest.skip("no GPU visible through NVML on this machine")
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    found = samples(registry)
    totals = [v for (name, _), v in found.items() if name == "nv_gpu_memory_total_bytes"]
    assert totals and all(v > 0 for v in totals)
    assert all(0 <= v <= 1 for (name, _), v in found.items() if name == "nv_gpu_utilization")


async def test_triton_counters_agree_with_the_statistics_extension() -> None:
    registry = CollectorRegistry()
    metrics = rm.RuntimeMetrics(registry)
    backend = FakeBackend()
    model = served(backend)
    scheduler = Scheduler(model, metrics=metrics.model("m", "1"))
    scheduler.start()
    await asyncio.gather(*[scheduler.infer(request(r, 1.0), None) for r in (1, 2, 3)])
    assert value(samples(TritonNames(registry)), "nv_inference_count", model="m",
                 version="1") == 0  # not on the hot path: carried over later
    await scheduler.stop()  # which carries the last counts over
    found = samples(TritonNames(registry))
    labels = {"model": "m", "version": "1"}
    stats = model.stats
    assert value(found, "nv_inference_request_success", **labels) == stats.success.count == 3
    assert value(found, "nv_inference_count", **labels) == stats.inference_count == 6
    assert value(found, "nv_inference_exec_count", **labels) == stats.execution_count
    for name, duration in (("queue", stats.queue), ("compute_input", stats.compute_input),
                           ("compute_infer", stats.compute_infer),
                           ("compute_output", stats.compute_output),
                           ("request", stats.success)):
        assert value(found, f"nv_inference_{name}_duration_us", **labels) == \
            pytest.approx(duration.ns / 1000, rel=1e-6, abs=1), name
    assert value(found, "nv_inference_request_duration_us", **labels) > 0
    assert value(found, "nv_inference_pending_request_count", **labels) == 0
    for reason in REASONS:
        assert value(found, "nv_inference_request_failure", reason=reason, **labels) == 0
    # Triton's exact names: no _total, no _created
    assert not [n for n, _ in found if n.startswith("nv_") and n.endswith(("_total", "_created"))]


async def test_a_failed_batch_counts_as_a_backend_failure() -> None:
    registry = CollectorRegistry()
    metrics = rm.RuntimeMetrics(registry)
    backend = FakeBackend()
    backend.fail = True
    scheduler = Scheduler(served(backend), metrics=metrics.model("m", "1"))
    scheduler.start()
    with pytest.raises(TensorgateError):
        await scheduler.infer(request(1, 1.0), None)
    await scheduler.stop()
    found = samples(TritonNames(registry))
    assert value(found, "nv_inference_request_failure", model="m", version="1",
                 reason="BACKEND") == 1
    assert value(found, "nv_inference_request_success", model="m", version="1") == 0


def test_turned_off_there_are_no_triton_series(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = rm.RuntimeMetrics(registry, triton=False).model("m", "1")
    metrics.executed(2, 0.001)
    stats = ModelStats(inference_count=2, execution_count=1)
    metrics.publish(stats, 0)
    names = {name for name, _ in samples(TritonNames(registry, enabled=False))}
    assert "tensorgate_runtime_executions_total" in names
    assert not [n for n in names if n.startswith("nv_")]


def test_whole_numbers_are_written_whole_and_others_left_alone() -> None:
    text = (b'# HELP m_bytes total 1.0e+09\nm_bytes{gpu_uuid="GPU-1 2"} 8.589934592e+10\n'
            b"m_ratio 0.37\nm_big 1.2345678901234567e+20\nm_half 2.5e+06\n")
    assert whole_numbers(text) == (
        b'# HELP m_bytes total 1.0e+09\nm_bytes{gpu_uuid="GPU-1 2"} 85899345920\n'
        b"m_ratio 0.37\nm_big 1.2345678901234567e+20\nm_half 2500000\n")
    assert whole_numbers(b"m_frac 1.0000005e+06\n") == b"m_frac 1.0000005e+06\n"
