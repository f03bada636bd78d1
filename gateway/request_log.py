"""Per-request log lines, only when sampling or slow-request logging is on: one JSON object each.

Off (the default) it costs nothing: the pipeline holds None instead of a RequestLog.
"""

from __future__ import annotations

import logging
import random

import orjson

log = logging.getLogger("tensorgate.requests")


class RequestLog:
    """Logs a request when it is slower than `slow_s` or falls in the `sample` share."""

    def __init__(self, sample: float, slow_s: float, rng: random.Random | None = None) -> None:
        self.sample = sample
        self.slow_s = slow_s
        self.rng = rng or random.Random()

    def observe(self, request_id: str, model: str, version: str, protocol: str, code: str,
                seconds: float) -> bool:
        """Log the request if it qualifies; whether it was logged."""
        slow = 0 < self.slow_s <= seconds
        if not slow and not (self.sample > 0 and self.rng.random() < self.sample):
            return False
        log.info(orjson.dumps({
            "event": "request", "request_id": request_id, "model": model, "version": version,
            "protocol": protocol, "code": code, "latency_ms": round(seconds * 1e3, 3),
            "slow": slow}).decode())
        return True


def request_log(sample: float, slow_ms: float) -> RequestLog | None:
    return RequestLog(sample, slow_ms / 1e3) if sample > 0 or slow_ms > 0 else None
