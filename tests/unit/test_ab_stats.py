"""The A/B statistics on synthetic data with known answers."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tensorgate import abstats
from tensorgate.abstats import Arm, Moments, recommend


@pytest.mark.parametrize(("x", "n", "low", "high"), [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I.
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    # The textbook case: 5 of 10.
    (5, 10, 0.2366, 0.7634),
])
def test_wilson_matches_published_intervals(x: int, n: int, low: float, high: float) -> None:
    lo, hi = abstats.wilson(x, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_without_samples_says_nothing() -> None:
    assert abstats.wilson(0, 0) == (0.0, 1.0)
    assert abstats.wilson(10, 10)[1] == 1.0


def test_two_proportion_z_known_value() -> None:
    # 90 % vs 92 % of 10,000 each: pooled p 0.91, se = sqrt(.91 * .09 * 2e-4), z = 4.941.
    z, p = abstats.two_proportion_z(9000, 10000, 9200, 10000)
    assert z == pytest.approx(0.02 / math.sqrt(0.91 * 0.09 * 2e-4), rel=1e-9)
    assert z == pytest.approx(4.941, abs=1e-3)
    assert p == pytest.approx(7.76e-7, rel=1e-2)
    assert abstats.two_proportion_z(9200, 10000, 9000, 10000)[0] == pytest.approx(-z)
    assert abstats.two_proportion_z(0, 10, 0, 10) == (0.0, 1.0)
    assert abstats.two_proportion_z(1, 0, 1, 10) == (0.0, 1.0)


def test_two_sided_p_of_the_familiar_quantiles() -> None:
    assert abstats.two_sided_p(1.959963984540054) == pytest.approx(0.05)
    assert abstats.two_sided_p(-2.5758293035489) == pytest.approx(0.01)
    assert abstats.two_sided_p(0) == 1.0


def test_percentile_agrees_with_numpy() -> None:
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(0, 1) for _ in range(1001))
    for q in (0, 50, 95, 99, 99.9, 100):
        assert abstats.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert math.isnan(abstats.percentile([], 50))


def test_moments_and_their_interval() -> None:
    m = Moments.of([1.0, 2.0, 3.0, 4.0])
    assert (m.n, m.mean) == (4, 2.5)
    assert m.variance == pytest.approx(5 / 3)
    lo, hi = m.interval()
    assert (lo + hi) / 2 == pytest.approx(2.5)
    assert hi - lo == pytest.approx(2 * abstats.Z95 * math.sqrt(5 / 3 / 4))
    assert math.isnan(Moments.of([]).mean)


def test_welch_z_known_value() -> None:
    a, b = Moments(100, 1.0, 4.0), Moments(400, 1.5, 1.0)
    z, p = abstats.welch_z(a, b)
    assert z == pytest.approx(0.5 / math.sqrt(4 / 100 + 1 / 400))
    assert p == pytest.approx(abstats.two_sided_p(z))


def test_sample_size_for_two_proportions() -> None:
    # The usual table value: 90 % vs 92 % needs about 3,213 per arm at alpha 0.05, power 0.8.
    assert abstats.samples_for_proportions(0.90, 0.02) == pytest.approx(3213, abs=5)
    assert abstats.samples_for_proportions(0.5, 0) == abstats.MIN_SAMPLES
    # From a perfect baseline, a drop of one point still takes hundreds of samples to see.
    assert abstats.samples_for_proportions(1.0, 0.01) > 700


def test_a_perfect_baseline_with_little_feedback_waits() -> None:
    assert recommend(arm(100, 1.0), arm(100, 0.99))[0] == "not enough data yet"


def arm(n: int, accuracy: float, errors: int = 0) -> Arm:
    return Arm(requests=n, errors=errors, labelled=n, hits=round(n * accuracy))


def test_ten_thousand_at_90_vs_92_percent_promotes() -> None:
    verdict, reason = recommend(arm(10_000, 0.90), arm(10_000, 0.92))
    assert verdict == "promote"
    assert "more accurate" in reason


def test_ten_thousand_at_92_vs_90_percent_keeps() -> None:
    assert recommend(arm(10_000, 0.92), arm(10_000, 0.90))[0] == "keep"


def test_fifty_vs_fifty_two_is_not_enough_data() -> None:
    assert recommend(arm(50, 0.90), arm(52, 0.92))[0] == "not enough data yet"


def test_enough_requests_but_little_feedback_waits() -> None:
    verdict, reason = recommend(Arm(5000, 0, labelled=20, hits=18), Arm(5000, 0, 20, hits=19))
    assert verdict == "not enough data yet"
    assert "feedback" in reason


def test_a_candidate_that_fails_more_is_kept_out_even_without_feedback() -> None:
    verdict, reason = recommend(Arm(10_000, 10, 0), Arm(10_000, 60, 0))
    assert verdict == "keep"
    assert "fails more often" in reason


def test_no_difference_keeps_only_with_the_power_to_see_one_point() -> None:
    assert recommend(arm(1000, 0.90), arm(1000, 0.905))[0] == "not enough data yet"
    assert recommend(arm(40_000, 0.90), arm(40_000, 0.9001))[0] == "keep"


def test_regression_compares_mean_absolute_errors() -> None:
    rng = random.Random(3)
    good = Moments.of([abs(rng.gauss(0, 1.0)) for _ in range(5000)])
    bad = Moments.of([abs(rng.gauss(0, 1.3)) for _ in range(5000)])
    base = Arm(5000, 0, 5000, errors_abs=good)
    worse = Arm(5000, 0, 5000, errors_abs=bad)
    assert recommend(base, worse)[0] == "keep"
    assert recommend(worse, base)[0] == "promote"
    few = Arm(150, 0, 150, errors_abs=Moments.of([abs(rng.gauss(0, 1.0)) for _ in range(150)]))
    assert recommend(few, few)[0] == "not enough data yet"
