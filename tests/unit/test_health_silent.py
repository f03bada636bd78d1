"""Health and a worker that answers nothing: once ejected, its calls in flight fail over."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from common.errors import TensorgateError
from gateway.health import Endpoint, Health
from gateway.lane_client import LaneUpstream
from tests.unit.fake_upstreams import health


class _Silent(asyncio.Protocol):
    """Takes every byte and answers none: a partitioned or hung host, as the gateway sees it."""

    def data_received(self, data: bytes) -> None:
        pass


def _silent_health() -> Health:
    tracker = health(eject_after=2)
    # NOTE: probes that give up quickly keep this test fast; the default is a second.
    tracker.probe_timeout = 0.05
    return tracker


async def test_an_ejected_worker_that_answers_nothing_fails_its_calls_over() -> None:
    server = await asyncio.get_running_loop().create_server(_Silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = LaneUpstream(f"127.0.0.1:{port}", 1 << 20)
    tracker = _silent_health()
    endpoint = Endpoint(upstream)
    tracker.watch(endpoint)
    try:
        stuck = asyncio.ensure_future(upstream.call("ModelInfer", b"request", 60.0))
        assert not await tracker.probe(endpoint) and endpoint.admitted
        assert not stuck.done()
        assert not await tracker.probe(endpoint)
        assert not endpoint.admitted
        with pytest.raises(TensorgateError) as caught:
            await asyncio.wait_for(stuck, 30.0)  # a ceiling: the cut is immediate
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert "closed the connection" in str(caught.value)
    finally:
        await upstream.close()
        server.close()


async def test_a_connection_that_never_opens_ends_at_the_call_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    never: asyncio.Future = asyncio.get_running_loop().create_future()

    async def black_hole(self: LaneUpstream) -> object:
        return await never  # a SYN dropped on the way: the kernel retries for minutes

    monkeypatch.setattr(LaneUpstream, "_open", black_hole)
    upstream = LaneUpstream("10.231.0.2:8012", 1 << 20)
    tracker = _silent_health()
    endpoint = Endpoint(upstream)
    tracker.watch(endpoint)
    with pytest.raises(TensorgateError) as caught:
        await asyncio.wait_for(upstream.call("ModelInfer", b"request", 0.05), 30.0)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not accept a connection within 0.050s" in str(caught.value)
    # The probes end too, so one such worker holds up no health round; it is ejected.
    for _ in range(2):
        assert not await asyncio.wait_for(tracker.probe(endpoint), 30.0)
    assert not endpoint.admitted
    never.cancel()
