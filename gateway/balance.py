"""The balance stage: least outstanding requests between two random choices (power of two).

Two endpoints are drawn at random and the one with fewer requests in flight wins; with one
endpoint it is chosen at once. Cheap, and it avoids the herd that a global minimum attracts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from common.errors import unavailable
from gateway.upstream import Upstream

_rng = random.Random()


def pick(pool: Sequence[Upstream], model: str, rng: random.Random = _rng) -> Upstream:
    if not pool:
        raise unavailable(f"model '{model}': no runtime worker is available")
    if len(pool) == 1:
        return pool[0]
    a, b = rng.sample(range(len(pool)), 2)
    first, second = pool[a], pool[b]
    return first if first.outstanding <= second.outstanding else second
