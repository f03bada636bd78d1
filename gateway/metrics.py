"""The gateway's Prometheus metrics: names, labels and bucket boundaries, stated once."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from common.buckets import LATENCY_BUCKETS
from common.metric_values import Observer, value_of


class _Series:
    """One (model, protocol, code)'s count and latency (common/metric_values.py)."""

    __slots__ = ("count", "latency")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self.count = value_of(counter)
        self.latency = Observer(histogram)

    def observe(self, seconds: float) -> None:
        self.count.inc(1)
        self.latency.one(seconds)


class GatewayMetrics:
    """Request counters and latency, labelled by model, protocol and status code only."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "tensorgate_requests", "Inference requests answered by the gateway",
            ["model", "protocol", "code"], registry=registry)
        self.latency = Histogram(
            "tensorgate_request_duration_seconds", "End-to-end inference latency at the gateway",
            ["model", "protocol"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge(
            "tensorgate_requests_in_flight", "Inference requests being handled",
            registry=registry, multiprocess_mode="livesum")
        self.auth_failures = Counter(
            "tensorgate_auth_failures", "Requests refused by authentication or authorisation",
            ["code"], registry=registry)
        self.quota_rejections = Counter(
            "tensorgate_quota_rejections", "Requests refused for being over a quota",
            ["model", "limit"], registry=registry)
        self.sheds = Counter(
            "tensorgate_shed_requests",
            "Requests refused at once because the gateway had max_in_flight requests in flight",
            ["model"], registry=registry)
        self.retries = Counter(
            "tensorgate_upstream_retries", "Requests retried on another runtime worker",
            ["model"], registry=registry)
        self.endpoint_healthy = Gauge(
            "tensorgate_endpoint_healthy", "1 while a runtime worker is admitted, 0 if ejected",
            ["endpoint"], registry=registry, multiprocess_mode="min")
        self.ejections = Counter(
            "tensorgate_endpoint_ejections", "Runtime workers ejected after repeated failures",
            ["endpoint"], registry=registry)
        self.shadow_requests = Counter(
            "tensorgate_shadow_requests", "Shadow copies sent, by outcome",
            ["model", "version", "code"], registry=registry)
        self.shadow_latency = Histogram(
            "tensorgate_shadow_duration_seconds", "Latency of shadow copies",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=registry)
        self.shadow_agreement = Counter(
            "tensorgate_shadow_agreement", "Shadow answers compared with the primary's",
            ["model", "version", "agree"], registry=registry)
        self.registry_ok = Gauge(
            "tensorgate_registry_ok",
            "1 while the registry file is the one the gateway opened; 0 once it was deleted or "
            "replaced (the last good snapshot is served, admin calls are refused)",
            registry=registry, multiprocess_mode="min")

        self.lane_arena_slots = Gauge(
            "tensorgate_lane_arena_slots", "Slots of the lane arena holding requests' tensors "
            "in flight to runtime workers on this host", registry=registry,
            multiprocess_mode="livesum")
        self.lane_arena_bytes = Gauge(
            "tensorgate_lane_arena_bytes", "Bytes of the lane arena holding requests' tensors "
            "in flight to runtime workers on this host", registry=registry,
            multiprocess_mode="livesum")

        #: `in_flight`'s value: `inc(1)` as a request comes, `inc(-1)` as it goes.
        self.in_flight_value = value_of(self.in_flight)
        # NOTE: labels() validates and locks on every call; the children are looked up once.
        self._series: dict[tuple[str, str, str], _Series] = {}

    def observe(self, model: str, protocol: str, code: str, seconds: float) -> None:
        """One request answered: counted by its outcome, its latency observed."""
        key = (model, protocol, code)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self.requests.labels(model, protocol, code),
                                                 self.latency.labels(model, protocol))
        series.observe(seconds)
