"""A batch's observations at once count exactly as one observe per amount would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from common.buckets import LATENCY_BUCKETS
from common.metric_values import Observer

#: On a bound, between bounds, past the largest finite one, zero, and repeats.
AMOUNTS = [0.0, 0.0001, 0.00011, 0.001, 0.001, 0.7, 10.0, 11.0, 42.0, 0.00025]


def samples(histogram: Histogram) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in histogram.collect() for s in metric.samples if "created" not in s.name}


def test_observe_many_counts_as_each_observe() -> None:
    registry = CollectorRegistry()
    one = Histogram("one_s", "x", ["m"], buckets=LATENCY_BUCKETS, registry=registry)
    many = Histogram("many_s", "x", ["m"], buckets=LATENCY_BUCKETS, registry=registry)
    for amount in AMOUNTS:
        one.labels("a").observe(amount)
    Observer(many.labels("a")).many(AMOUNTS)
    Observer(many.labels("a")).many([])
    one.labels("b").observe(0.003)
    Observer(many.labels("b")).many([0.003])  # one amount: the plain observe
    expected = {(name.replace("one_", "many_"), labels): value
                for (name, labels), value in samples(one).items()}
    assert samples(many) == expected
    assert expected[("many_s_count", (("m", "a"),))] == len(AMOUNTS)


def test_observe_many_without_the_insides_it_knows_observes_each() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, amount: float) -> None:
            self.seen.append(amount)

    plain = Plain()
    Observer(plain).many(AMOUNTS)
    assert plain.seen == AMOUNTS
