"""The checks that gate a run (SLO thresholds, the observed A/B split) and the load profiles."""

from __future__ import annotations

import math
from collections.abc import Mapping

PROFILES = ("steady", "ramp", "spike")


def slo_violations(p99_ms: float, max_error_rate: float, observed_p99_ms: float,
                   requests: int, failures: int) -> list[str]:
    """What broke the SLO, in words; empty when it held. p99_ms <= 0 or max_error_rate < 0:
    that threshold is off."""
    broken = []
    if p99_ms > 0 and observed_p99_ms > p99_ms:
        broken.append(f"p99 latency {observed_p99_ms:.1f} ms is over the SLO of {p99_ms:g} ms")
    rate = failures / requests if requests else 0.0
    if max_error_rate >= 0 and rate > max_error_rate:
        broken.append(f"error rate {rate:.4f} ({failures} of {requests}) is over the SLO of "
                      f"{max_error_rate:g}")
    if (p99_ms > 0 or max_error_rate >= 0) and requests == 0:
        broken.append("no requests were made")
    return broken


def parse_policy(text: str) -> dict[str, float]:
    """"1=90,2=10" → each version's expected share of requests (here 0.9 and 0.1)."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        version, sep, weight = part.partition("=")
        if not sep or not version.strip():
            raise ValueError(f"--ab-policy: expected VERSION=WEIGHT, got '{part}'")
        weights[version.strip()] = float(weight)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"--ab-policy: weights must add up to more than 0, got '{text}'")
    return {version: weight / total for version, weight in weights.items()}


def split_violations(expected: Mapping[str, float], observed: Mapping[str, int],
                     tolerance: float) -> list[str]:
    """Versions whose observed share of answers is further than `tolerance` from the policy."""
    total = sum(observed.values())
    if total == 0:
        return ["no answer named the version that served it"]
    broken = []
    for version in sorted(set(expected) | set(observed)):
        share = observed.get(version, 0) / total
        want = expected.get(version, 0.0)
        if abs(share - want) > tolerance:
            broken.append(f"version {version} served {share:.3f} of {total} requests; the "
                          f"policy gives it {want:.3f} (tolerance {tolerance:g})")
    return broken


def users_at(profile: str, elapsed: float, total: float, users: int) -> int:
    """Users wanted `elapsed` seconds into a run of `total` seconds (0: no end).

    steady: all of them throughout. ramp: from 1 up to all, linearly over the run.
    spike: a fifth of them, then all of them for the middle fifth of the run, then a fifth again.
    """
    if profile == "ramp" and total > 0:
        return max(1, math.ceil(users * min(1.0, elapsed / total)))
    if profile == "spike":
        base = max(1, users // 5)
        if total <= 0:
            return users
        return users if 0.4 * total <= elapsed < 0.6 * total else base
    return users
