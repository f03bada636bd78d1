"""The A/B report's statistics, pure: Wilson intervals, two-sample z-tests, percentiles, verdicts.

No I/O and no numpy: each function takes counts or samples and returns numbers a test can check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

#: The two-sided 95 % normal quantile, and the one-sided 80 % one (for 80 % power).
Z95 = 1.959963984540054
Z80 = 0.8416212335729143
ALPHA = 0.05
#: A version needs this many labelled answers (or requests, for error rates) before any verdict.
MIN_SAMPLES = 100
#: The smallest accuracy difference worth acting on; "no difference" needs power to see it.
MIN_EFFECT = 0.01
#: For regression, the smallest MAE difference worth acting on, as a share of the baseline's MAE.
MIN_RELATIVE_EFFECT = 0.05

Verdict = Literal["promote", "keep", "not enough data yet"]
#: `recommend`'s rule in words, for the report.
RULE = (f"each version needs {MIN_SAMPLES} requests and {MIN_SAMPLES} answers with feedback; "
        f"keep the baseline if the candidate fails more often or is less accurate (higher MAE) "
        f"with p < {ALPHA}; promote it if it is more accurate (lower MAE) with p < {ALPHA}; "
        f"with no significant difference, keep once each version has enough feedback to see "
        f"an accuracy difference of {MIN_EFFECT:g} ({100 * MIN_RELATIVE_EFFECT:g} % of the MAE) "
        f"at 80 % power, else wait for more data (two-proportion z-tests; a two-sample z-test "
        f"of absolute errors for regression)")


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion; (0, 1) when there are no samples."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # NOTE: at p = 0 or 1 the near end is exactly 0 or 1; floating point would miss it by a hair.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def two_sided_p(z: float) -> float:
    """The two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2))


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Pooled two-proportion z-test of x1/n1 against x2/n2: (z, two-sided p).

    z > 0 when the second proportion is higher. No samples, or no variance: (0, 1).
    """
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x2 / n2 - x1 / n1) / se
    return z, two_sided_p(z)


@dataclass(frozen=True)
class Moments:
    """Count, mean and sample variance of a set of numbers (absolute errors, for regression)."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Moments:
        n = len(values)
        if n == 0:
            return cls(0, math.nan, math.nan)
        mean = math.fsum(values) / n
        variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return cls(n, mean, variance)

    def interval(self, z: float = Z95) -> tuple[float, float]:
        """The normal-approximation interval of the mean (fine for the sample sizes we act on)."""
        if self.n == 0:
            return math.nan, math.nan
        half = z * math.sqrt(self.variance / self.n)
        return self.mean - half, self.mean + half


def welch_z(a: Moments, b: Moments) -> tuple[float, float]:
    """Two-sample z-test of means with unequal variances: (z, two-sided p); z > 0 when b is higher.

    A z rather than Welch's t: verdicts need MIN_SAMPLES per side, where the two agree closely.
    """
    if a.n < 2 or b.n < 2:
        return 0.0, 1.0
    se = math.sqrt(a.variance / a.n + b.variance / b.n)
    if se == 0:
        return 0.0, 1.0
    z = (b.mean - a.mean) / se
    return z, two_sided_p(z)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 to 100), interpolated as numpy does by default; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def samples_for_proportions(p: float, effect: float) -> int:
    """Samples per version to detect a difference `effect` from p (alpha 0.05, power 0.8)."""
    if effect <= 0:
        return MIN_SAMPLES
    # NOTE: look the way there is room: from p = 1 a difference can only be downwards.
    q = p + effect if p + effect <= 1 else p - effect
    pooled = (p + q) / 2
    root = (Z95 * math.sqrt(2 * pooled * (1 - pooled))
            + Z80 * math.sqrt(p * (1 - p) + q * (1 - q)))
    return max(MIN_SAMPLES, math.ceil(root * root / (effect * effect)))


def samples_for_means(variance: float, effect: float) -> int:
    """Samples per version to detect a difference of means `effect` (alpha 0.05, power 0.8)."""
    if effect <= 0 or not math.isfinite(variance):
        return MIN_SAMPLES
    return max(MIN_SAMPLES, math.ceil(2 * (Z95 + Z80) ** 2 * variance / (effect * effect)))


@dataclass(frozen=True)
class Arm:
    """What one version showed: requests and errors, and quality on its labelled answers.

    `quality` is accuracy's hits for classifiers (higher is better) or absolute errors' moments
    for regression (lower is better); None when no answer of the version has feedback yet.
    """

    requests: int
    errors: int
    labelled: int
    hits: int = 0
    errors_abs: Moments | None = None


def recommend(baseline: Arm, candidate: Arm) -> tuple[Verdict, str]:
    """Promote the candidate, keep the baseline, or wait; the rule, in order:

    1. Either version has < MIN_SAMPLES requests: not enough data yet.
    2. The candidate's error rate is higher with p < 0.05: keep.
    3. Either version has < MIN_SAMPLES labelled answers: not enough data yet.
    4. The candidate's accuracy (MAE) is worse with p < 0.05: keep; better with p < 0.05: promote.
    5. No significant difference: keep once each version has enough samples to see a difference
       of MIN_EFFECT accuracy (MIN_RELATIVE_EFFECT of the MAE) at 80 % power; until then, wait.
    """
    if min(baseline.requests, candidate.requests) < MIN_SAMPLES:
        return "not enough data yet", f"each version needs {MIN_SAMPLES} requests"
    z, p = two_proportion_z(baseline.errors, baseline.requests,
                            candidate.errors, candidate.requests)
    if z > 0 and p < ALPHA:
        return "keep", f"the candidate fails more often (p = {p:.3g})"
    if min(baseline.labelled, candidate.labelled) < MIN_SAMPLES:
        return "not enough data yet", f"each version needs {MIN_SAMPLES} answers with feedback"
    if baseline.errors_abs is not None and candidate.errors_abs is not None:
        return _recommend_means(baseline.errors_abs, candidate.errors_abs)
    z, p = two_proportion_z(baseline.hits, baseline.labelled, candidate.hits, candidate.labelled)
    if p < ALPHA:
        if z < 0:
            return "keep", f"the candidate is less accurate (p = {p:.3g})"
        return "promote", f"the candidate is more accurate (p = {p:.3g})"
    needed = samples_for_proportions(baseline.hits / baseline.labelled, MIN_EFFECT)
    return _no_difference(min(baseline.labelled, candidate.labelled), needed, p,
                          f"an accuracy difference of {MIN_EFFECT:g}")


def _recommend_means(baseline: Moments, candidate: Moments) -> tuple[Verdict, str]:
    z, p = welch_z(baseline, candidate)
    if p < ALPHA:
        if z > 0:
            return "keep", f"the candidate's absolute error is larger (p = {p:.3g})"
        return "promote", f"the candidate's absolute error is smaller (p = {p:.3g})"
    effect = MIN_RELATIVE_EFFECT * baseline.mean
    needed = samples_for_means(max(baseline.variance, candidate.variance), effect)
    return _no_difference(min(baseline.n, candidate.n), needed, p,
                          f"{100 * MIN_RELATIVE_EFFECT:g} % of the MAE")


def _no_difference(have: int, needed: int, p: float, effect: str) -> tuple[Verdict, str]:
    if have >= needed:
        return "keep", f"no significant difference (p = {p:.3g}) with enough data to see {effect}"
    return "not enough data yet", (f"no significant difference yet (p = {p:.3g}); about "
                                   f"{needed} answers with feedback per version to see {effect}")
