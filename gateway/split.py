"""Pipeline stage: split, the A/B choice of a model version from the model's traffic policy.

Sticky by subject (weighted rendezvous hashing); `rewrite.with_version` sets it on the request.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from hashlib import blake2b

from common.policy import ANONYMOUS, Principal, TrafficPolicy

#: Subjects remembered per model before that model's cache is emptied and refilled.
CACHE_ENTRIES = 65536
_U_SCALE = 2.0**-52


def _uniform(model: str, version: str, subject: str) -> float:
    """A stable u in (0, 1) for one (model, version, subject)."""
    digest = blake2b(f"{model}\0{version}\0{subject}".encode(), digest_size=8).digest()
    # NOTE: 52 bits plus a half keeps u exact in a double and strictly inside (0, 1).
    return ((int.from_bytes(digest, "little") >> 12) + 0.5) * _U_SCALE


def _weighted_random(policy: TrafficPolicy, rng: random.Random | None) -> str:
    total = sum(weight for _, weight in policy.weights)
    point = (rng or random).random() * total
    for version, weight in policy.weights:
        point -= weight
        if point < 0:
            return version
    return policy.weights[-1][0]  # float rounding left the point at the very top


def choose(policy: TrafficPolicy, subject: str, rng: random.Random | None = None) -> str:
    """The version for `subject` under `policy`; plain weighted random when `subject` is empty.

    Weighted rendezvous hashing: every version v of weight w scores w / -ln(u(model, v, subject))
    and the highest score wins, which gives each version its weight's share of subjects. A
    version's score depends on its own weight only, so raising one weight moves subjects onto
    that version alone, and the order of the weights never matters.
    """
    if not subject:
        return _weighted_random(policy, rng)
    best, best_score = "", -1.0
    for version, weight in policy.weights:
        score = weight / -math.log(_uniform(policy.model, version, subject))
        # NOTE: ties (practically never) go to the smaller version name, not to the list order.
        if score > best_score or (score == best_score and version < best):
            best, best_score = version, score
    return best


class Splitter:
    """`choose` behind a bounded cache, so a repeated subject costs one dict lookup.

    One cache per model, kept while the model's policy stays the same object (or an equal one
    from a refreshed snapshot); a changed policy or more than `max_entries` subjects empties it.
    """

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._caches: dict[str, tuple[TrafficPolicy, dict[str, str]]] = {}

    def choose(self, policy: TrafficPolicy, subject: str) -> str:
        if not subject:
            return _weighted_random(policy, None)
        entry = self._caches.get(policy.model)
        if entry is None or (entry[0] is not policy and entry[0] != policy):
            cache: dict[str, str] = {}
            self._caches[policy.model] = (policy, cache)
        else:
            cache = entry[1]
            if entry[0] is not policy:
                # An equal policy from a new snapshot: keep the answers, hold the new object.
                self._caches[policy.model] = (policy, cache)
        version = cache.get(subject)
        if version is None:
            if len(cache) >= self.max_entries:
                cache.clear()
            version = cache[subject] = choose(policy, subject)
        return version

    def cached(self, model: str) -> int:
        """How many subjects are remembered for `model`."""
        entry = self._caches.get(model)
        return 0 if entry is None else len(entry[1])


def subject_of(
    policy: TrafficPolicy, principal: Principal, headers: Mapping[str, str] | None
) -> str:
    """Who the split sticks to: the caller's key or JWT subject, or a header it sends.

    `headers` (HTTP headers or gRPC metadata) must have lower-case names. The empty string means
    no subject: the anonymous caller when auth is off, or a missing header.
    """
    sticky = policy.sticky
    if sticky.startswith("header:"):
        if headers is None:
            return ""
        return headers.get(sticky[len("header:") :].lower(), "")
    # "key" and "sub" both stick to the principal: its subject is "key:<name>" or "jwt:<sub>".
    # NOTE: every caller is ANONYMOUS when auth is off; one shared subject would pin them all.
    if principal.subject == ANONYMOUS.subject:
        return ""
    return principal.subject
