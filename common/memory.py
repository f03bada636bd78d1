"""The C heap of a server passing large tensors: kept for reuse between requests, given back to
the system after a message far larger than the rest (glibc keeps it otherwise), and in a
gateway shared by all its threads in two heaps."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable

#: A message at least this large is followed by a trim: grpc core holds such a message (as
#: received, or as inflated from gzip) in many small blocks, and glibc keeps their pages after
#: they are freed, so every large call would leave the process that much bigger.
TRIM_AFTER_BYTES = 8 * 1024 * 1024


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    function = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_TRIM = _malloc_trim()
_busy = threading.Lock()

#: glibc's mallopt parameters, and what tune_allocator sets them to. Left to itself glibc moves
#: both thresholds with the blocks freed, and with buffers of a few hundred KiB (an image's
#: bytes as read, parsed and answered) it ended up giving the heap's top back after nearly every
#: request and faulting it in again on the next: each page zeroed by the kernel, 10-20 % of the
#: gateway's CPU on 224x224 images. Fixed, blocks under TRIM_AFTER_BYTES come from the heap and
#: its pages stay for the next request; larger ones are mapped and unmapped on their own, and
#: the Trimmer gives back what their parts left in the heap.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
TUNED = {M_MMAP_THRESHOLD: TRIM_AFTER_BYTES, M_TRIM_THRESHOLD: 4 * TRIM_AFTER_BYTES}
#: A gateway's: glibc gives each thread that allocates a heap of its own (up to eight per
#: core), and grpc core's threads allocate the messages they read, so each of their heaps came
#: to keep about as many bytes as were ever in flight: the gateways' RSS rose by 100 MiB over
#: 100,000 images before it levelled off. Two heaps for all threads, each giving back a free
#: top past 8 MiB, keep it within a few tens of MiB at no CPU cost measured.
GATEWAY_TUNED = TUNED | {M_TRIM_THRESHOLD: TRIM_AFTER_BYTES, M_ARENA_MAX: 2}
#: The environment variables that set the same by hand, which then win: the thresholds go
#: together (setting either stops glibc moving the other), the count of heaps on its own.
BY_HAND = {M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_", M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_",
           M_ARENA_MAX: "MALLOC_ARENA_MAX"}
THRESHOLDS = (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)


def tune_allocator(tuned: dict[int, int] = TUNED) -> bool:
    """Set glibc's heap parameters (TUNED, or GATEWAY_TUNED); call once at start-up, before
    any thread starts. False where some were left alone: there is no mallopt (musl, macOS),
    or the environment sets them by hand."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    by_hand = {parameter for parameter, name in BY_HAND.items() if name in os.environ}
    if by_hand & set(THRESHOLDS):
        by_hand |= set(THRESHOLDS)
    took = [mallopt(parameter, value) == 1 for parameter, value in tuned.items()
            if parameter not in by_hand]
    return all(took) and not by_hand & tuned.keys()


def trim() -> bool:
    """Return free heap pages to the system; blocking (run it off the event loop). A trim
    already under way covers this one too: False then, and where there is no malloc_trim."""
    if _TRIM is None or not _busy.acquire(blocking=False):
        return False
    try:
        _TRIM(0)
    finally:
        _busy.release()
    return True


class Trimmer:
    """Trims `interval_s` after a request, in a thread; requests meanwhile share that trim. So
    a flood of large or refused calls costs one trim a second, and the data grpc was still
    receiving for a refused call is freed, and trimmed with the rest, by the time it runs."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._pending: asyncio.TimerHandle | None = None

    def request(self) -> None:
        """Ask for a trim soon; call on the event loop."""
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(self.interval_s, self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pending = None
        loop.run_in_executor(None, trim)
