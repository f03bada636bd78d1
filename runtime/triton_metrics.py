"""Triton's metric names beside ours (`nv_inference_*`, `nv_gpu_*`), with Triton's labels and
semantics, so dashboards, alerts and `perf_analyzer --collect-metrics` written for Triton work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric

from runtime.stats import ModelStats

MODEL = ["model", "version"]
#: Triton's (≥2.30) failure reasons: a bounded set, whatever the error said.
REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
_REASON_OF = {
    grpc.StatusCode.DEADLINE_EXCEEDED: "REJECTED",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "REJECTED",
    grpc.StatusCode.UNAVAILABLE: "REJECTED",
    grpc.StatusCode.CANCELLED: "CANCELED",
    grpc.StatusCode.INTERNAL: "BACKEND",
}
#: Counter name → help, in Triton's words. Cumulative: the durations are µs summed per request.
COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count": "Number of model executions performed",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_input_duration_us":
        "Cumulative compute input duration in microseconds",
    "nv_inference_compute_infer_duration_us":
        "Cumulative compute inference duration in microseconds",
    "nv_inference_compute_output_duration_us":
        "Cumulative compute output duration in microseconds",
}


def reason_of(code: grpc.StatusCode) -> str:
    return _REASON_OF.get(code, "OTHER")


class TritonMetrics:
    """The `nv_inference_*` metrics, labelled by served model and version only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        made = {name: Counter(name, text, [*MODEL, "reason"] if name.endswith("failure")
                              else MODEL, registry=registry)
                for name, text in COUNTERS.items()}
        self.counters = made
        self.pending = Gauge(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            MODEL, registry=registry, multiprocess_mode="livesum")

    def model(self, name: str, version: str) -> TritonModel:
        return TritonModel(self, name, version)


class TritonModel:
    """One version's children, bound once: the hot path only adds to them."""

    __slots__ = ("failure", "pending", "published", "totals")

    def __init__(self, metrics: TritonMetrics, name: str, version: str) -> None:
        made = metrics.counters
        # NOTE: every reason made now, so a failure panel shows 0 rather than no series at all.
        self.failure = {reason: made["nv_inference_request_failure"].labels(name, version, reason)
                        for reason in REASONS}
        self.totals = [made[counter].labels(name, version) for counter in FROM_STATS]
        self.published = [0] * len(FROM_STATS)
        self.pending = metrics.pending.labels(name, version)

    def publish(self, stats: ModelStats, waiting: int) -> None:
        """Add what the statistics counted since the last call; set the pending requests."""
        now = _from_stats(stats)
        for counter, new, old, scale in zip(self.totals, now, self.published,
                                            FROM_STATS.values()):
            if new > old:
                counter.inc((new - old) * scale)
        self.published = now
        self.pending.set(waiting)


#: Counters carried over from the statistics extension's numbers, and their scale (ns → µs).
#: Its compute durations are per request, each request seeing its batch's whole compute time,
#: as Triton's are.
FROM_STATS = {
    "nv_inference_request_success": 1.0, "nv_inference_count": 1.0,
    "nv_inference_exec_count": 1.0, "nv_inference_request_duration_us": 1e-3,
    "nv_inference_queue_duration_us": 1e-3, "nv_inference_compute_input_duration_us": 1e-3,
    "nv_inference_compute_infer_duration_us": 1e-3,
    "nv_inference_compute_output_duration_us": 1e-3,
}


def _from_stats(stats: ModelStats) -> list[int]:
    """The statistics' numbers in FROM_STATS's order."""
    return [stats.success.count, stats.inference_count, stats.execution_count,
            stats.success.ns, stats.queue.ns, stats.compute_input.ns, stats.compute_infer.ns,
            stats.compute_output.ns]


class TritonNames:
    """Serves a collector's `nv_inference_*` counters under Triton's exact names.

    prometheus_client would write `nv_inference_count_total` (and `_created`); Triton writes
    `nv_inference_count`. The family is typed untyped, since a counter's text form must end in
    `_total`; PromQL's rate() and increase() do not look at the type.
    """

    def __init__(self, inner: Any, enabled: bool = True) -> None:
        self.inner = inner
        self.enabled = enabled

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            if family.name not in COUNTERS:
                if self.enabled or not family.name.startswith("nv_"):
                    yield family
                continue
            if not self.enabled:
                continue
            renamed = Metric(family.name, family.documentation, "unknown")
            renamed.samples = [s._replace(name=family.name) for s in family.samples
                               if s.name == family.name + "_total"]
            yield renamed


def gpu_families() -> tuple[GaugeMetricFamily, ...]:
    """Triton's GPU gauges, one label `gpu_uuid` (filled by runtime.metrics.GpuCollector)."""
    return (
        GaugeMetricFamily("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)",
                          labels=["gpu_uuid"]),
        GaugeMetricFamily("nv_gpu_memory_total_bytes", "GPU total memory, in bytes",
                          labels=["gpu_uuid"]),
        GaugeMetricFamily("nv_gpu_memory_used_bytes", "GPU used memory, in bytes",
                          labels=["gpu_uuid"]),
        GaugeMetricFamily("nv_gpu_power_usage", "GPU power usage in watts",
                          labels=["gpu_uuid"]),
        GaugeMetricFamily("nv_gpu_power_limit", "GPU power management limit in watts",
                          labels=["gpu_uuid"]),
    )


def add_gpu(families: Iterable[GaugeMetricFamily], uuid: str,
            values: Iterable[float | None]) -> None:
    """One GPU's readings into the families, in their order; None: the GPU cannot tell."""
    for family, value in zip(families, values):
        if value is not None:
            family.add_metric([uuid], value)
