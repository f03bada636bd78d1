"""Forward: one retry on UNAVAILABLE, on another endpoint, within what is left of the deadline."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry

from common.errors import TensorgateError, invalid_argument, unavailable
from gateway.forward import Forward
from gateway.health import Endpoint
from gateway.metrics import GatewayMetrics
from tests.unit.fake_upstreams import endpoints, fake, health


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def forward(pool: list[Endpoint], clock: Clock | None = None,
            registry: CollectorRegistry | None = None) -> Forward:
    tracker = health(eject_after=3)
    for endpoint in pool:
        tracker.watch(endpoint)
    metrics = GatewayMetrics(registry or CollectorRegistry())
    return Forward(tracker, metrics, clock or Clock())


async def test_unavailable_is_retried_once_on_another_endpoint() -> None:
    pool = endpoints(0, 9)  # with two, the idle one is always tried first
    fake(pool[0]).error = unavailable("runtime worker 10.0.0.0:8012 closed the connection")
    registry = CollectorRegistry()
    stage = forward(pool, registry=registry)
    assert await stage(pool, "m", "ModelInfer", b"req", 2.0) == b"ok"
    assert fake(pool[0]).calls == [("ModelInfer", 2.0)]
    assert fake(pool[1]).calls == [("ModelInfer", 2.0)]
    assert pool[0].failures == 1 and pool[1].failures == 0
    assert registry.get_sample_value("tensorgate_upstream_retries_total", {"model": "m"}) == 1


async def test_invalid_argument_is_not_retried_and_counts_as_an_answer() -> None:
    pool = endpoints(0, 9)
    pool[0].failures = 2
    fake(pool[0]).error = invalid_argument("input 'INPUT0' of model 'm': bad shape")
    stage = forward(pool)
    with pytest.raises(TensorgateError) as caught:
        await stage(pool, "m", "ModelInfer", b"req", 2.0)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fake(pool[1]).calls == []
    assert pool[0].failures == 0


async def test_deadline_exceeded_is_not_retried_nor_held_against_the_worker() -> None:
    pool = endpoints(0, 9)
    pool[0].failures = 2
    fake(pool[0]).error = TensorgateError(grpc.StatusCode.DEADLINE_EXCEEDED, "late")
    stage = forward(pool)
    with pytest.raises(TensorgateError):
        await stage(pool, "m", "ModelInfer", b"req", 2.0)
    assert fake(pool[1]).calls == [] and pool[0].failures == 2


async def test_the_retry_gets_only_what_remains_of_the_deadline() -> None:
    pool = endpoints(0, 9)
    clock = Clock()
    fake(pool[0]).error = unavailable("gone")
    fake(pool[0]).before = lambda: setattr(clock, "now", clock.now + 0.75)
    stage = forward(pool, clock)
    await stage(pool, "m", "ModelInfer", b"req", 1.0)
    [(_, timeout)] = fake(pool[1]).calls
    assert timeout == pytest.approx(0.25)


async def test_no_retry_once_the_deadline_has_passed() -> None:
    pool = endpoints(0, 9)
    clock = Clock()
    fake(pool[0]).error = unavailable("runtime worker 10.0.0.0:8012 is unavailable")
    fake(pool[0]).before = lambda: setattr(clock, "now", clock.now + 1.5)
    stage = forward(pool, clock)
    with pytest.raises(TensorgateError) as caught:
        await stage(pool, "m", "ModelInfer", b"req", 1.0)
    assert caught.value.message == "runtime worker 10.0.0.0:8012 is unavailable"
    assert fake(pool[1]).calls == []


async def test_only_one_retry_and_the_last_error_is_reported() -> None:
    pool = endpoints(0, 0, 0)
    order: list[int] = []
    for i, endpoint in enumerate(pool):
        fake(endpoint).error = unavailable(f"worker {i} is unavailable")
        fake(endpoint).before = lambda i=i: order.append(i)
    stage = forward(pool)
    with pytest.raises(TensorgateError) as caught:
        await stage(pool, "m", "ModelInfer", b"req", 1.0)
    assert len(order) == 2 and order[0] != order[1]
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.message == f"worker {order[1]} is unavailable"


async def test_with_nowhere_else_to_go_the_first_error_is_reported() -> None:
    pool = endpoints(0)
    fake(pool[0]).error = unavailable("runtime worker 10.0.0.0:8012 is unavailable: refused")
    stage = forward(pool)
    with pytest.raises(TensorgateError) as caught:
        await stage(pool, "m", "ModelInfer", b"req", 1.0)
    assert caught.value.message == "runtime worker 10.0.0.0:8012 is unavailable: refused"
    assert len(fake(pool[0]).calls) == 1


async def test_the_retry_skips_ejected_endpoints() -> None:
    pool = endpoints(0, 9, 9)
    pool[1].admitted = False
    fake(pool[0]).error = unavailable("gone")
    stage = forward(pool)
    assert await stage(pool, "m", "ModelInfer", b"req", 1.0) == b"ok"
    assert fake(pool[1]).calls == [] and len(fake(pool[2]).calls) == 1


async def test_all_ejected_fails_at_once_naming_the_model() -> None:
    pool = endpoints(0, 0)
    for endpoint in pool:
        endpoint.admitted = False
    stage = forward(pool)
    with pytest.raises(TensorgateError) as caught:
        await stage(pool, "digits", "ModelInfer", b"req", 1.0)
    assert caught.value.message == "model 'digits': no healthy runtime worker (2 ejected)"
    assert all(fake(e).calls == [] for e in pool)
