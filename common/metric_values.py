"""Prometheus children written straight into their values: the public `inc` and `observe`
re-check each amount and walk the buckets in Python, a cost paid per request; through the
public API where another prometheus_client keeps its values otherwise."""

from __future__ import annotations

import bisect
from typing import Any


class Observer:
    """A histogram child's observations, one or a batch's at once: each bucket and the sum are
    changed once, where one observe per request scans the buckets and (under `serve`) locks the
    shared file each time. The same counts as an observe of each amount."""

    __slots__ = ("bounds", "buckets", "histogram", "last", "total")

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        bounds: Any = getattr(histogram, "_upper_bounds", None)
        buckets: Any = getattr(histogram, "_buckets", None)
        total: Any = getattr(histogram, "_sum", None)
        known = (bounds is not None and buckets is not None and total is not None
                 and len(bounds) == len(buckets))
        # NOTE: another prometheus_client's insides: the public observe, amount by amount.
        self.buckets: Any = buckets if known else None
        self.bounds: Any = bounds
        self.total: Any = total
        self.last = len(bounds) - 1 if known else 0

    def one(self, amount: float) -> None:
        if self.buckets is None:
            self.histogram.observe(amount)
            return
        self.total.inc(amount)
        self.buckets[min(bisect.bisect_left(self.bounds, amount), self.last)].inc(1)

    def many(self, amounts: list[float]) -> None:
        if len(amounts) < 2 or self.buckets is None:
            for amount in amounts:
                self.one(amount)
            return
        counts = [0] * len(self.buckets)
        bounds, last = self.bounds, self.last
        for amount in amounts:
            counts[min(bisect.bisect_left(bounds, amount), last)] += 1
        self.total.inc(sum(amounts))
        for bucket, count in zip(self.buckets, counts):
            if count:
                bucket.inc(count)


def value_of(child: Any) -> Any:
    """What a counter's or gauge's child keeps its number in (its `inc` takes any amount,
    unchecked: ours are never negative for counters), or the child itself."""
    value = getattr(child, "_value", None)
    return value if callable(getattr(value, "inc", None)) else child
