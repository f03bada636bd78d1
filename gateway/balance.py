"""The balance stage: least outstanding requests between two random choices (power of two).

Two admitted endpoints are drawn at random and the one with fewer requests in flight wins; with
one it is chosen at once. Cheap, and it avoids the herd that a global minimum attracts. Ejected
endpoints, and `exclude` (the one a retry is moving away from), are never chosen. The common
case (two random draws, both usable) allocates nothing; otherwise one scan counts the usable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from common.errors import TensorgateError, unavailable
from gateway.health import Endpoint

_rng = random.Random()


def pick(pool: Sequence[Endpoint], model: str, exclude: Endpoint | None = None,
         rng: random.Random = _rng) -> Endpoint:
    n = len(pool)
    if n >= 2:
        i = int(rng.random() * n)
        j = int(rng.random() * (n - 1))
        j += j >= i
        first, second = pool[i], pool[j]
        if (first.admitted and second.admitted and first is not exclude
                and second is not exclude):
            return _lesser(first, second)
    elif n == 1:
        only = pool[0]
        if only.admitted and only is not exclude:
            return only
    return _scan(pool, model, exclude, rng)


def _lesser(first: Endpoint, second: Endpoint) -> Endpoint:
    return first if first.upstream.outstanding <= second.upstream.outstanding else second


def _scan(pool: Sequence[Endpoint], model: str, exclude: Endpoint | None,
          rng: random.Random) -> Endpoint:
    """Some endpoints are not usable: two random ranks among the usable ones."""
    usable = 0
    for endpoint in pool:
        usable += endpoint.admitted and endpoint is not exclude
    if usable == 0:
        raise _none_usable(pool, model)
    i = int(rng.random() * usable)
    j = int(rng.random() * (usable - 1)) if usable > 1 else i
    j += usable > 1 and j >= i
    first = second = None
    rank = 0
    for endpoint in pool:
        if endpoint.admitted and endpoint is not exclude:
            if rank == i:
                first = endpoint
            if rank == j:
                second = endpoint
            rank += 1
    assert first is not None and second is not None
    return _lesser(first, second)


def _none_usable(pool: Sequence[Endpoint], model: str) -> TensorgateError:
    if not pool:
        return unavailable(f"model '{model}': no runtime worker is available")
    ejected = sum(not endpoint.admitted for endpoint in pool)
    if ejected == 0:
        # Only the excluded endpoint was left: the caller reports its own error instead.
        return unavailable(f"model '{model}': no other runtime worker is available")
    return unavailable(f"model '{model}': no healthy runtime worker ({ejected} ejected)")
