"""Garbage collection for a long-running server: the young generation is collected after
10,000 net container allocations instead of Python's 700 (both the gateway and the runtime)."""

from __future__ import annotations

import gc

#: Net container allocations between young-generation collections. A few dozen requests in
#: flight allocate past Python's 700 for a moment, so under load a gateway collected about 45
#: times a second, and about one collection in a hundred was a full one that held its event
#: loop for 25-35 ms. At 10,000 a loaded gateway collects about once a minute. Cyclic garbage
#: stays bounded by this count; the older generations keep Python's thresholds.
YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """Raise the young generation's threshold; call once, when start-up is done."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
