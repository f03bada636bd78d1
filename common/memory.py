"""Giving freed heap back to the system after a large message: glibc keeps it otherwise."""

from __future__ import annotations

import asyncio
import ctypes
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
