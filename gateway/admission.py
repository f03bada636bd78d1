"""The admission stage: a bound on inference requests in flight in this process, and drain state.

Beyond the bound a request is shed at once with RESOURCE_EXHAUSTED / 429 and Retry-After: the
gateway never queues what it cannot serve soon. While draining, readiness reports false.
"""

from __future__ import annotations

import grpc

from common.errors import TensorgateError
from gateway.metrics import GatewayMetrics

#: Seconds a shed caller is asked to wait (HTTP Retry-After, gRPC trailing metadata).
RETRY_AFTER_S = 1.0
#: Distinct model labels on the shed counter; further names count as "_other", since a shed
#: request has not been authenticated and its model name is the caller's to choose.
MAX_LABELS = 64


class Admission:
    """Counts requests in flight; `enter` always counts, so `leave` always follows it.

    `enter` raises after counting, which lets the pipeline call `leave` from the `finally` it
    already has, with no second try block.
    """

    def __init__(self, max_in_flight: int, metrics: GatewayMetrics) -> None:
        self.limit = max(1, max_in_flight)
        self.metrics = metrics
        self.in_flight = 0
        #: Set from drain() on: readiness is false, requests are still served.
        self.draining = False
        self._labels: set[str] = set()

    def enter(self, model: str) -> None:
        """Count one request; raise RESOURCE_EXHAUSTED when that takes it past the bound."""
        self.in_flight += 1
        if self.in_flight > self.limit:
            if model not in self._labels and len(self._labels) < MAX_LABELS:
                self._labels.add(model)
            self.metrics.sheds.labels(model if model in self._labels else "_other").inc()
            raise TensorgateError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"gateway overloaded: {self.limit} requests in flight; retry later",
                retry_after=RETRY_AFTER_S)

    def leave(self) -> None:
        self.in_flight -= 1

    def drain(self) -> None:
        """Readiness goes false; requests already here, and new ones, are still served."""
        self.draining = True
