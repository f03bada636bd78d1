"""One connection's deadline (headers, body, idle), moved several times per request without a
timer per move: the one timer it holds is re-armed only when it fires before the deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    """At most one deadline and one timer. The timer fires at the deadline or earlier, never
    later: it is set no further out than `step`, the shortest deadline ever armed, so a deadline
    armed later (at least `step` away) is never missed; firing early, it re-arms."""

    def __init__(self, loop: asyncio.AbstractEventLoop, step: float,
                 expired: Callable[[str, float], None]) -> None:
        self.loop = loop
        self.step = step
        self.expired = expired
        self.due: float | None = None
        self.part = ""
        self.seconds = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, seconds: float, part: str) -> None:
        """The deadline: `part` must be done within `seconds` from now (replaces any other)."""
        now = self.loop.time()
        self.due, self.part, self.seconds = now + seconds, part, seconds
        if self._timer is None:
            self._timer = self.loop.call_at(min(self.due, now + self.step), self._fire)

    def disarm(self) -> None:
        self.due = None

    def close(self) -> None:
        """No deadline and no timer any more (the connection is gone)."""
        self.due = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        due = self.due
        if due is None:
            return
        now = self.loop.time()
        if now < due:
            self._timer = self.loop.call_at(min(due, now + self.step), self._fire)
            return
        self.due = None
        self.expired(self.part, self.seconds)
