"""Admission: the in-flight bound sheds at once and counts sheds per model, bounded labels."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry

from common.errors import TensorgateError
from gateway import admission
from gateway.admission import Admission
from gateway.metrics import GatewayMetrics


def make(limit: int) -> tuple[Admission, CollectorRegistry]:
    registry = CollectorRegistry()
    return Admission(limit, GatewayMetrics(registry)), registry


def test_past_the_bound_requests_are_shed_with_retry_after_and_counted() -> None:
    gate, registry = make(2)
    gate.enter("digits")
    gate.enter("digits")
    with pytest.raises(TensorgateError) as caught:
        gate.enter("digits")
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.http_status == 429 and caught.value.retry_after == 1.0
    assert caught.value.message == "gateway overloaded: 2 requests in flight; retry later"
    assert registry.get_sample_value("tensorgate_shed_requests_total", {"model": "digits"}) == 1
    for _ in range(3):  # NOTE: the shed one was counted too, and leaves like the others
        gate.leave()
    assert gate.in_flight == 0
    gate.enter("digits")  # room again


def test_shed_labels_are_bounded() -> None:
    gate, registry = make(1)
    gate.enter("x")
    for i in range(admission.MAX_LABELS + 5):
        with pytest.raises(TensorgateError):
            gate.enter(f"model-{i}")
        gate.leave()
    assert registry.get_sample_value("tensorgate_shed_requests_total", {"model": "_other"}) == 5


def test_drain_only_flags_readiness() -> None:
    gate, _ = make(1)
    gate.drain()
    assert gate.draining
    gate.enter("m")  # still served while draining
