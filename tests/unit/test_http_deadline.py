"""gateway/http_deadline.py on a loop whose clock the test moves: a timer per connection, not one
per move of the deadline, and no deadline ever missed or kept past its time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from gateway.http_deadline import Deadline


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """What Deadline uses of a loop; `advance` runs the timers due, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[Timer]:
        return [t for t in self.timers if not t.cancelled]

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = sorted((t for t in self.timers if not t.cancelled and t.when <= end),
                         key=lambda t: t.when)
            if not due:
                break
            timer = due[0]
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = end


def deadline(step: float = 1.0) -> tuple[Deadline, Clock, list[tuple[str, float, float]]]:
    clock, fired = Clock(), []

    def expired(part: str, seconds: float) -> None:
        fired.append((part, seconds, clock.now))

    return Deadline(cast(asyncio.AbstractEventLoop, cast(Any, clock)), step, expired), clock, fired


def test_many_moves_make_one_timer() -> None:
    timer, clock, fired = deadline()
    for _ in range(1000):  # NOTE: a request's headers, body, answer and idle wait, many times
        timer.arm(10.0, "headers")
        timer.arm(60.0, "body")
        timer.disarm()
        timer.arm(5.0, "idle")
    assert len(clock.timers) == 1 and fired == []


def test_a_deadline_fires_at_its_time_not_before() -> None:
    timer, clock, fired = deadline(step=1.0)
    timer.arm(2.5, "body")
    clock.advance(2.4)
    assert fired == []
    clock.advance(0.2)
    assert fired == [("body", 2.5, 2.5)]
    assert clock.pending() == []


def test_a_deadline_moved_later_fires_at_the_new_time() -> None:
    timer, clock, fired = deadline(step=1.0)
    timer.arm(1.0, "idle")
    clock.advance(0.5)
    timer.arm(3.0, "headers")  # NOTE: due at 3.5; the timer set for 1.0 must not end it
    clock.advance(2.9)
    assert fired == []
    clock.advance(0.2)
    assert fired == [("headers", 3.0, 3.5)]


def test_a_disarmed_deadline_never_fires_and_leaves_no_timer() -> None:
    timer, clock, fired = deadline()
    timer.arm(1.0, "body")
    timer.disarm()
    clock.advance(10.0)
    assert fired == [] and clock.pending() == []
    timer.arm(1.0, "idle")  # NOTE: armed again after its timer lapsed
    clock.advance(1.0)
    assert fired == [("idle", 1.0, 11.0)]


def test_close_cancels_the_timer() -> None:
    timer, clock, fired = deadline()
    timer.arm(1.0, "idle")
    timer.close()
    assert clock.pending() == []
    clock.advance(5.0)
    assert fired == []
