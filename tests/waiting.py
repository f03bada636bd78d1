"""Waiting in tests for a state to hold: poll it under a generous ceiling, never sleep a fixed time.
The ceilings bound waits that would otherwise never end; they are not expectations."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CEILING_S = 60.0
EVERY_S = 0.01  # between looks


def polled(check: Callable[[], T], ceiling_s: float = CEILING_S, every_s: float = EVERY_S) -> T:
    """check()'s first truthy value, or its last (falsy) value once `ceiling_s` has passed."""
    ends = time.monotonic() + ceiling_s
    while not (value := check()) and time.monotonic() < ends:
        time.sleep(every_s)
    return value


async def polled_async(check: Callable[[], T], ceiling_s: float = CEILING_S,
                       every_s: float = EVERY_S) -> T:
    """polled() for a coroutine: yields to the loop between looks (every_s=0: one loop turn)."""
    ends = time.monotonic() + ceiling_s
    while not (value := check()) and time.monotonic() < ends:
        await asyncio.sleep(every_s)
    return value


def _held(value: T | None, what: str, ceiling_s: float, on_timeout: Callable[[], str] | None) -> T:
    if not value:
        more = f"\n{on_timeout()}" if on_timeout is not None else ""
        raise AssertionError(f"still not {what} after {ceiling_s:g} s{more}")
    return value


def until(check: Callable[[], T | None], what: str, ceiling_s: float = CEILING_S,
          every_s: float = EVERY_S, on_timeout: Callable[[], str] | None = None) -> T:
    """check()'s first truthy value; past `ceiling_s`, fail naming `what` (and on_timeout())."""
    return _held(polled(check, ceiling_s, every_s), what, ceiling_s, on_timeout)


async def until_async(check: Callable[[], T | None], what: str, ceiling_s: float = CEILING_S,
                      every_s: float = EVERY_S, on_timeout: Callable[[], str] | None = None) -> T:
    """until() for a coroutine: yields to the loop between looks (every_s=0: one loop turn)."""
    return _held(await polled_async(check, ceiling_s, every_s), what, ceiling_s, on_timeout)
