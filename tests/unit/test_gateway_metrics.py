"""The gateway's per-request metrics, written past prometheus_client's wrappers, read back as
its public API would have written them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from common.buckets import LATENCY_BUCKETS
from gateway.metrics import GatewayMetrics, _Series

# NOTE: each bound itself, either side of it, and past the last.
SECONDS = [0.0, *LATENCY_BUCKETS, *(b * 0.999 for b in LATENCY_BUCKETS),
           *(b * 1.001 for b in LATENCY_BUCKETS), 60.0]


def public(registry: CollectorRegistry) -> None:
    requests = Counter("tensorgate_requests", "Inference requests answered by the gateway",
                       ["model", "protocol", "code"], registry=registry)
    latency = Histogram("tensorgate_request_duration_seconds",
                        "End-to-end inference latency at the gateway", ["model", "protocol"],
                        buckets=LATENCY_BUCKETS, registry=registry)
    for seconds in SECONDS:
        requests.labels("digits", "grpc", "OK").inc()
        latency.labels("digits", "grpc").observe(seconds)


def series(registry: CollectorRegistry, name: str) -> list[bytes]:
    return [line for line in generate_latest(registry).splitlines()
            if line.startswith(name) and b"_created" not in line]


def test_counts_and_buckets_are_what_the_public_api_writes() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = GatewayMetrics(ours)
    for seconds in SECONDS:
        metrics.observe("digits", "grpc", "OK", seconds)
    public(theirs)
    for name in (b"tensorgate_requests_total", b"tensorgate_request_duration_seconds"):
        assert series(ours, name) == series(theirs, name) != []


def test_in_flight_goes_up_and_down() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.in_flight_value.inc(1)
    metrics.in_flight_value.inc(1)
    metrics.in_flight_value.inc(-1)
    assert registry.get_sample_value("tensorgate_requests_in_flight") == 1


class _Opaque:
    """A child that keeps its values where `_Series` cannot reach them."""

    def __init__(self) -> None:
        self.amounts: list[float] = []

    def inc(self, amount: float = 1) -> None:
        self.amounts.append(amount)

    def observe(self, amount: float) -> None:
        self.amounts.append(amount)


def test_children_of_another_shape_go_through_their_public_api() -> None:
    counter, histogram = _Opaque(), _Opaque()
    one = _Series(counter, histogram)
    one.observe(0.25)
    assert one.latency.buckets is None
    assert counter.amounts == [1] and histogram.amounts == [0.25]


_MULTIPROCESS = """
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from gateway.metrics import GatewayMetrics
metrics = GatewayMetrics(CollectorRegistry())
metrics.in_flight_value.inc(1)
metrics.observe("digits", "grpc", "OK", 0.003)
metrics.observe("digits", "grpc", "OK", 0.02)
read = CollectorRegistry()
MultiProcessCollector(read)
print(read.get_sample_value("tensorgate_requests_total",
                            {"model": "digits", "protocol": "grpc", "code": "OK"}),
      read.get_sample_value("tensorgate_request_duration_seconds_bucket",
                            {"model": "digits", "protocol": "grpc", "le": "0.005"}),
      read.get_sample_value("tensorgate_requests_in_flight"))
"""


def test_a_process_of_a_group_writes_its_share_to_the_shared_directory(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _MULTIPROCESS], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.split() == ["2.0", "1.0", "1.0"]
