"""Health: ejection after consecutive failures or a lost connection, re-admission by probe."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from common import lane
from common.errors import unavailable
from gateway.health import Endpoint
from gateway.lane_client import LaneUpstream
from tests.unit.fake_upstreams import NOT_READY, READY, FakeUpstream, fake, health


def value(registry: CollectorRegistry, name: str, endpoint: Endpoint) -> float | None:
    return registry.get_sample_value(name, {"endpoint": endpoint.address})


def test_ejected_after_k_consecutive_failures_and_once_only(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    tracker = health(eject_after=3, registry=registry)
    endpoint = Endpoint(FakeUpstream("10.0.0.1:8012"))
    tracker.watch(endpoint)
    tracker.failed(endpoint)
    tracker.failed(endpoint)
    tracker.succeeded(endpoint)  # the streak is broken: any answer, even an error, counts
    tracker.failed(endpoint)
    tracker.failed(endpoint)
    assert endpoint.admitted
    assert value(registry, "tensorgate_endpoint_healthy", endpoint) == 1
    with caplog.at_level(logging.INFO, "tensorgate.gateway"):
        for _ in range(4):
            tracker.failed(endpoint)
    assert not endpoint.admitted
    assert value(registry, "tensorgate_endpoint_healthy", endpoint) == 0
    assert value(registry, "tensorgate_endpoint_ejections_total", endpoint) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "runtime worker 10.0.0.1:8012 ejected: after 3 consecutive failures"]


async def test_one_good_probe_readmits(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    tracker = health(eject_after=1, registry=registry)
    endpoint = Endpoint(FakeUpstream("10.0.0.1:8012", answer=READY))
    tracker.watch(endpoint)
    tracker.failed(endpoint)
    assert not endpoint.admitted
    with caplog.at_level(logging.INFO, "tensorgate.gateway"):
        assert await tracker.probe(endpoint)
        assert await tracker.probe(endpoint)
    assert endpoint.admitted and endpoint.failures == 0
    assert fake(endpoint).calls == [("ServerReady", tracker.probe_timeout)] * 2
    assert value(registry, "tensorgate_endpoint_healthy", endpoint) == 1
    assert [r.getMessage() for r in caplog.records if "re-admitted" in r.getMessage()] == [
        "runtime worker 10.0.0.1:8012 re-admitted: a health probe succeeded"]


@pytest.mark.parametrize("outcome", ["unavailable", "not ready", "garbage"])
async def test_failing_probes_eject_an_admitted_endpoint(outcome: str) -> None:
    tracker = health(eject_after=2)
    upstream = FakeUpstream("10.0.0.1:8012", answer=NOT_READY if outcome == "not ready"
                            else b"\xff\xff\xff")
    if outcome == "unavailable":
        upstream.error = unavailable("gone")
    endpoint = Endpoint(upstream)
    tracker.watch(endpoint)
    assert not await tracker.probe(endpoint)
    assert endpoint.admitted
    await tracker.probe_all()
    assert not endpoint.admitted


async def test_an_ejected_endpoint_stays_out_while_probes_fail() -> None:
    tracker = health(eject_after=1)
    endpoint = Endpoint(FakeUpstream("10.0.0.1:8012"))
    endpoint.upstream.error = unavailable("gone")  # type: ignore[attr-defined]
    tracker.watch(endpoint)
    for _ in range(3):
        await tracker.probe_all()
    assert not endpoint.admitted


async def test_the_background_task_probes_until_stopped() -> None:
    tracker = health(eject_after=1, interval=0.01)
    endpoint = Endpoint(FakeUpstream("10.0.0.1:8012", answer=READY))
    tracker.watch(endpoint)
    tracker.failed(endpoint)
    readmitted = asyncio.Event()
    fake(endpoint).before = readmitted.set
    tracker.start()
    await asyncio.wait_for(readmitted.wait(), 5)
    await tracker.stop()
    assert endpoint.admitted
    assert tracker._task is None


async def test_a_lost_lane_connection_ejects_at_once() -> None:
    tracker = health(eject_after=3)
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = lane.HEADER.unpack(await reader.readexactly(lane.HEADER.size))[0]
        await reader.readexactly(size)  # the gateway's hello, answered as a runtime would
        writer.write(lane.hello({"accepts": []}))
        await reader.readexactly(lane.HEADER.size)  # the call: now it is in flight
        accepted.set_result(writer)

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = LaneUpstream(f"127.0.0.1:{port}", 1024)
    endpoint = Endpoint(upstream)
    tracker.watch(endpoint)
    call = asyncio.ensure_future(upstream.call("ModelInfer", b"x", 5.0))
    (await asyncio.wait_for(accepted, 60)).close()  # the worker dies with a call in flight
    with pytest.raises(Exception, match="closed the connection"):
        await call
    assert not endpoint.admitted
    tracker.forget(endpoint)
    await upstream.close()
    server.close()


def test_a_forgotten_endpoint_takes_no_calls_and_its_loss_is_not_reported() -> None:
    tracker = health()
    upstream = LaneUpstream("unix:/nonexistent", 1024)
    endpoint = Endpoint(upstream)
    tracker.watch(endpoint)
    assert upstream.on_lost is not None
    tracker.forget(endpoint)
    assert upstream.on_lost is None and not endpoint.admitted
    assert tracker.endpoints == []
