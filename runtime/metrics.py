"""The runtime's Prometheus metrics: queue, compute, batch size, depth, executions, model state,
and GPU utilisation and memory read through NVML at scrape time when a GPU is visible; beside
them, unless turned off, Triton's names for the same numbers (runtime.triton_metrics).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from common.buckets import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS
from common.errors import TensorgateError
from common.metric_values import Observer, value_of
from common.names import is_whole
from runtime import metrics_http, triton_metrics
from runtime.stats import ModelStats
from runtime.triton_metrics import TritonMetrics, TritonModel, TritonNames

log = logging.getLogger("tensorgate.runtime")

#: A model version's states, as the repository index names them.
STATES = ("LOADING", "READY", "UNAVAILABLE")
MODEL = ["model", "version"]


class ModelMetrics:
    """One model version's metric children, bound once so the hot path formats no labels."""

    __slots__ = ("batch_size", "compute", "depth", "executions", "inferences", "queue",
                 "request", "triton")

    def __init__(self, metrics: RuntimeMetrics, name: str, version: str) -> None:
        self.queue = Observer(metrics.queue_time.labels(name, version))
        self.compute = Observer(metrics.compute_time.labels(name, version))
        self.request = Observer(metrics.request_time.labels(name, version))
        self.batch_size = Observer(metrics.batch_size.labels(name, version))
        self.depth = metrics.queue_depth.labels(name, version)
        self.executions = value_of(metrics.executions.labels(name, version)).inc
        self.inferences = value_of(metrics.inferences.labels(name, version)).inc
        self.triton: TritonModel | None = (None if metrics.triton is None
                                           else metrics.triton.model(name, version))

    def executed(self, rows: int, seconds: float) -> None:
        """One batch ran: the same place and numbers as ModelStats.record_batch."""
        self.executions(1)
        self.inferences(rows)
        self.batch_size.one(rows)
        self.compute.one(seconds)

    def failed(self, error: TensorgateError) -> None:
        """A queued request failed (rare: counted at once, by Triton's reason)."""
        if self.triton is not None:
            self.triton.failure[triton_metrics.reason_of(error.code)].inc()

    def publish(self, stats: ModelStats, waiting: int) -> None:
        """Triton's counters are the statistics extension's numbers, carried over off the
        hot path (each second and when a version stops), so serving pays nothing for them."""
        if self.triton is not None:
            self.triton.publish(stats, waiting)


class RuntimeMetrics:
    """Every runtime metric, labelled by model and version (and state) only.

    Gauges sum over live runtime workers in multiprocess mode (`tensorgate serve`), so
    `tensorgate_model_state{state="READY"}` counts the workers where a version is ready.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY, triton: bool = True) -> None:
        self.registry = registry
        self.triton = TritonMetrics(registry) if triton else None
        self.queue_time = Histogram(
            "tensorgate_runtime_queue_duration_seconds",
            "Time a request waited in the runtime's queue before its batch started",
            MODEL, buckets=LATENCY_BUCKETS, registry=registry)
        self.compute_time = Histogram(
            "tensorgate_runtime_compute_duration_seconds",
            "Time one execution (a batch) took: join inputs, run the model, split outputs",
            MODEL, buckets=LATENCY_BUCKETS, registry=registry)
        self.request_time = Histogram(
            "tensorgate_runtime_request_duration_seconds",
            "Time a successful request spent in the runtime, from queueing to its answer",
            MODEL, buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram(
            "tensorgate_runtime_batch_size", "Rows per execution",
            MODEL, buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.queue_depth = Gauge(
            "tensorgate_runtime_queue_depth", "Requests waiting in the runtime's queue",
            MODEL, registry=registry, multiprocess_mode="livesum")
        self.executions = Counter(
            "tensorgate_runtime_executions", "Batches run (the statistics' execution_count)",
            MODEL, registry=registry)
        self.inferences = Counter(
            "tensorgate_runtime_inferences", "Rows inferred (the statistics' inference_count)",
            MODEL, registry=registry)
        self.load_time = Gauge(
            "tensorgate_model_load_seconds", "How long loading and warming up a version took",
            MODEL, registry=registry, multiprocess_mode="max")
        self.state = Gauge(
            "tensorgate_model_state", "1 for the state a version is in (summed over workers)",
            [*MODEL, "state"], registry=registry, multiprocess_mode="livesum")

    def model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, name, version)

    def set_state(self, name: str, version: str, state: str) -> None:
        for each in STATES:
            self.state.labels(name, version, each).set(int(each == state))


_default: RuntimeMetrics | None = None


def default_metrics(triton: bool = True) -> RuntimeMetrics:
    """The process-wide metrics in the default registry, made on first use (several Runtime
    objects in one process, as in tests, share them rather than register names twice); the
    first to ask decides whether Triton's names are kept."""
    global _default
    if _default is None:
        _default = RuntimeMetrics(triton=triton)
    return _default


class GpuCollector:
    """GPU utilisation and memory, read from NVML when Prometheus scrapes, one label `gpu`;
    with `triton`, Triton's `nv_gpu_*` gauges too, labelled `gpu_uuid`."""

    def __init__(self, nvml: Any, indices: list[int], triton: bool = True) -> None:
        self.nvml = nvml
        self.indices = indices
        self.triton = triton

    def collect(self) -> Iterator[Metric]:
        util = GaugeMetricFamily("tensorgate_gpu_utilization_ratio",
                                 "Share of the last sample period a kernel ran (0-1)",
                                 labels=["gpu"])
        used = GaugeMetricFamily("tensorgate_gpu_memory_used_bytes", "GPU memory in use",
                                 labels=["gpu"])
        total = GaugeMetricFamily("tensorgate_gpu_memory_total_bytes", "GPU memory in all",
                                  labels=["gpu"])
        nv = triton_metrics.gpu_families() if self.triton else ()
        for index in self.indices:
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                uuid = _text(self.nvml.nvmlDeviceGetUUID(handle)) if nv else ""
            except self.nvml.NVMLError as exc:
                # NOTE: one GPU that fails to answer (fallen off the bus) must not fail the scrape.
                log.warning("NVML could not read GPU %d: %s", index, exc)
                continue
            util.add_metric([str(index)], rates.gpu / 100.0)
            used.add_metric([str(index)], float(memory.used))
            total.add_metric([str(index)], float(memory.total))
            if nv:
                triton_metrics.add_gpu(nv, uuid, (
                    rates.gpu / 100.0, float(memory.total), float(memory.used),
                    self._watts(self.nvml.nvmlDeviceGetPowerUsage, handle),
                    self._watts(self.nvml.nvmlDeviceGetPowerManagementLimit, handle)))
        yield from (util, used, total, *nv)

    def _watts(self, read: Any, handle: Any) -> float | None:
        """NVML's milliwatts in watts; None where the GPU does not report power."""
        try:
            return float(read(handle)) / 1000.0
        except self.nvml.NVMLError:
            return None


def _text(value: str | bytes) -> str:
    # NOTE: older pynvml releases return bytes.
    return value.decode() if isinstance(value, bytes) else value


def visible_gpus(count: int, env: Mapping[str, str]) -> list[int]:
    """NVML indices this process may use: all, or those CUDA_VISIBLE_DEVICES lists by index."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return list(range(count))
    indices = [int(part) for part in listed.split(",") if is_whole(part.strip())]
    return [i for i in indices if i < count]


def gpu_collector(nvml: Any = None, env: Mapping[str, str] | None = None,
                  triton: bool = True) -> GpuCollector | None:
    """A GpuCollector when NVML imports, initialises and sees a GPU; None otherwise."""
    if nvml is None:
        try:
            import pynvml  # nvidia-ml-py, optional
        except ImportError:
            return None
        nvml = pynvml
    try:
        nvml.nvmlInit()
        indices = visible_gpus(nvml.nvmlDeviceGetCount(), os.environ if env is None else env)
    except nvml.NVMLError as exc:
        log.info("no GPU metrics: NVML did not start (%s)", exc)
        return None
    return GpuCollector(nvml, indices, triton) if indices else None


_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


class LiveMultiProcessCollector(multiprocess.MultiProcessCollector):
    """Collects a prometheus multiprocess directory, first dropping the live gauges of
    processes that have died, so a restarted runtime worker's queue depth and state are not
    counted twice. Counters and histograms of dead processes stay: totals never go down."""

    def collect(self) -> Iterator[Metric]:
        assert self._path is not None
        for path in Path(self._path).glob("gauge_live*.db"):
            match = _LIVE_FILE.search(path.name)
            if match and not _alive(int(match.group(1))):
                multiprocess.mark_process_dead(int(match.group(1)), self._path)
        return super().collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serving_registry(multiproc_dir: str | None = None, gpu: bool = True,
                     triton: bool = True) -> CollectorRegistry:
    """What a /metrics endpoint serves: this process's metrics, or a multiprocess directory's
    when one is given, plus the GPUs when NVML sees any; Triton's names unless `triton` is
    off."""
    registry = CollectorRegistry(auto_describe=False)
    source: Any = LiveMultiProcessCollector(None, path=multiproc_dir) if multiproc_dir \
        else REGISTRY
    registry.register(TritonNames(source, triton))  # type: ignore[arg-type]
    collector = gpu_collector(triton=triton) if gpu else None
    if collector is not None:
        registry.register(collector)  # type: ignore[arg-type]
    return registry


def serve(port: int, host: str, multiproc_dir: str | None = None, triton: bool = True) -> None:
    """Serve /metrics on a background thread."""
    metrics_http.start(port, host, serving_registry(multiproc_dir, triton=triton))
    log.info("runtime metrics on http://%s:%d/metrics", host, port)
