"""Endpoint health: passive reports from the forward stage, active ServerReady probes, ejection.

An endpoint is ejected after `eject_after_failures` consecutive failures (or at once when its
lane connection is lost) and re-admitted after one good probe; balance picks admitted ones only.
An ejected worker that does not answer probes at all has its lane connection dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import grpc

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from common.settings import GatewaySettings
from gateway.lane_client import LaneUpstream
from gateway.metrics import GatewayMetrics
from gateway.upstream import Upstream

log = logging.getLogger("tensorgate.gateway")

# NOTE: a worker that takes longer than this to say it is ready is as good as not ready.
PROBE_TIMEOUT_S = 1.0
#: Set (by `serve` and `gateway --processes N`) when the metrics live in shared files.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Endpoint:
    """One runtime worker as balance sees it: its upstream and its health state."""

    __slots__ = ("address", "admitted", "failures", "upstream")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.address = upstream.address
        self.admitted = True
        #: Consecutive failures, passive and probes alike; any success resets it.
        self.failures = 0

    def __repr__(self) -> str:
        state = "admitted" if self.admitted else "ejected"
        return f"Endpoint({self.address}, {state}, failures={self.failures})"


class Health:
    """Tracks every watched endpoint; `start()` runs the probes in a background task."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics,
                 probe_timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.interval = settings.health_interval_s
        self.eject_after = max(1, settings.eject_after_failures)
        self.probe_timeout = probe_timeout_s
        self.metrics = metrics
        self.endpoints: list[Endpoint] = []
        self._task: asyncio.Task | None = None

    def watch(self, endpoint: Endpoint) -> None:
        self.endpoints.append(endpoint)
        self.metrics.endpoint_healthy.labels(endpoint.address).set(int(endpoint.admitted))
        if isinstance(endpoint.upstream, LaneUpstream):
            endpoint.upstream.on_lost = lambda: self.lost(endpoint)

    def forget(self, endpoint: Endpoint) -> None:
        """Stop watching; a forgotten endpoint takes no new calls, retries included."""
        endpoint.admitted = False
        if endpoint in self.endpoints:
            self.endpoints.remove(endpoint)
        if isinstance(endpoint.upstream, LaneUpstream):
            endpoint.upstream.on_lost = None
        if MULTIPROCESS_ENV in os.environ:
            # NOTE: prometheus_client cannot drop a label set from the files of multiprocess
            # mode (it warns, and the file keeps the value); the supervisor's directory goes
            # with the process group.
            return
        with contextlib.suppress(KeyError):
            self.metrics.endpoint_healthy.remove(endpoint.address)

    # The passive side, called by the forward stage once per call.

    def succeeded(self, endpoint: Endpoint) -> None:
        """The worker answered (even with an error of the request's own making)."""
        endpoint.failures = 0

    def failed(self, endpoint: Endpoint) -> None:
        """UNAVAILABLE or a broken connection."""
        endpoint.failures += 1
        if endpoint.admitted and endpoint.failures >= self.eject_after:
            self._eject(endpoint, f"after {endpoint.failures} consecutive failures")

    def lost(self, endpoint: Endpoint) -> None:
        """The lane connection closed under us: the worker is gone until a probe says otherwise."""
        endpoint.failures += 1
        if endpoint.admitted:
            self._eject(endpoint, "its connection was lost")

    def _eject(self, endpoint: Endpoint, why: str) -> None:
        endpoint.admitted = False
        self.metrics.endpoint_healthy.labels(endpoint.address).set(0)
        self.metrics.ejections.labels(endpoint.address).inc()
        log.warning("runtime worker %s ejected: %s", endpoint.address, why)

    def _admit(self, endpoint: Endpoint) -> None:
        endpoint.admitted = True
        endpoint.failures = 0
        self.metrics.endpoint_healthy.labels(endpoint.address).set(1)
        log.info("runtime worker %s re-admitted: a health probe succeeded", endpoint.address)

    def _cut(self, endpoint: Endpoint) -> None:
        """An ejected worker that answers nothing (a partition, a dead host): its calls in flight
        fail now with UNAVAILABLE, which forward retries elsewhere, not at their deadlines."""
        if isinstance(endpoint.upstream, LaneUpstream):
            endpoint.upstream.abort()

    # The active side.

    async def probe(self, endpoint: Endpoint) -> bool:
        """Ask one worker whether it is ready, and record the answer."""
        silent = False
        try:
            answer = await endpoint.upstream.call("ServerReady", b"", self.probe_timeout)
            ready = pb.ServerReadyResponse.FromString(answer).ready
        except TensorgateError as exc:
            ready, silent = False, exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
        except Exception:
            # NOTE: whatever goes wrong is a failed probe; it must never end the health task.
            ready = False
        if endpoint not in self.endpoints:
            return ready
        if not ready:
            self.failed(endpoint)
            if silent and not endpoint.admitted:
                self._cut(endpoint)
        elif not endpoint.admitted:
            self._admit(endpoint)
        else:
            endpoint.failures = 0
        return ready

    async def probe_all(self) -> None:
        """One round: every watched endpoint, concurrently, so one slow worker delays no other."""
        if self.endpoints:
            await asyncio.gather(*(self.probe(e) for e in list(self.endpoints)))

    async def run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
