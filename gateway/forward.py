"""The forward stage: send the bytes to the endpoint balance picks; retry once on UNAVAILABLE.

Inference is idempotent, so a call that meets UNAVAILABLE (a worker gone, or its connection
broken mid-call) goes once more to another admitted endpoint, within what is left of its deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import grpc

from common.errors import TensorgateError
from gateway import balance
from gateway.context import RequestContext
from gateway.health import Endpoint, Health
from gateway.metrics import GatewayMetrics
from gateway.request_parts import Request

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# NOTE: the gateway's own timer also says DEADLINE_EXCEEDED, so it proves nothing either way.
_NEUTRAL = grpc.StatusCode.DEADLINE_EXCEEDED


class Forward:
    """Calls a method on an endpoint of the pool; every outcome is reported to health."""

    def __init__(self, health: Health, metrics: GatewayMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.health = health
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, pool: Sequence[Endpoint], model: str, method: str, request: Request,
                       timeout: float, call: RequestContext | None = None) -> bytes:
        """The answer's bytes, untouched; `timeout` is the caller's whole remaining deadline.

        An inference's `call` learns the worker it went to (`endpoint`).
        """
        deadline = self.clock() + timeout
        endpoint = balance.pick(pool, model)
        if call is not None:
            call.endpoint = endpoint.address
        try:
            answer = await endpoint.upstream.call(method, request, timeout)
        except TensorgateError as exc:
            if not self._report(endpoint, exc):
                raise
            first = exc
        else:
            self.health.succeeded(endpoint)
            return answer
        return await self._retry(pool, model, method, request, deadline, endpoint, first, call)

    async def _retry(self, pool: Sequence[Endpoint], model: str, method: str, request: Request,
                     deadline: float, failed: Endpoint, first: TensorgateError,
                     call: RequestContext | None) -> bytes:
        remaining = deadline - self.clock()
        if remaining <= 0:
            raise first
        try:
            other = balance.pick(pool, model, exclude=failed)
        except TensorgateError:
            raise first from None
        self.metrics.retries.labels(model).inc()
        if call is not None:
            call.endpoint = other.address
        try:
            answer = await other.upstream.call(method, request, remaining)
        except TensorgateError as exc:
            self._report(other, exc)
            raise
        self.health.succeeded(other)
        return answer

    def _report(self, endpoint: Endpoint, error: TensorgateError) -> bool:
        """Tell health how a call failed; True when another endpoint may be tried."""
        if error.code == _UNAVAILABLE:
            self.health.failed(endpoint)
            return True
        if error.code != _NEUTRAL:
            self.health.succeeded(endpoint)
        return False
