"""Garbage collection for a long-running server: the young generation is collected after 2,000
net container allocations instead of Python's 700 (the gateway, the runtime and the floors)."""

from __future__ import annotations

import gc

#: Net container allocations between young-generation collections. The requests a loaded
#: gateway holds for a moment take it past Python's 700 about 45 times a second over HTTP, and
#: one collection in a hundred or so is a full one that holds the event loop 25-35 ms. At 2,000
#: the HTTP path collects about once in 8 s. A gRPC call leaves a small reference cycle inside
#: grpcio, so that path must still collect; a higher threshold would make each of those pauses
#: longer (10,000: 3.5 ms, which showed in p99). Cyclic garbage stays bounded by this count.
YOUNG_THRESHOLD = 2_000


def tune_collector() -> None:
    """Raise the young generation's threshold; call once, when start-up is done."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
