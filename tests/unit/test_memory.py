"""The heap trimmer: requests while a trim is pending share it; at most one per interval."""

from __future__ import annotations

import asyncio
import threading

import pytest

from common import memory


def test_requests_share_a_pending_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[threading.Event] = [threading.Event(), threading.Event(), threading.Event()]
    done: list[int] = []

    def fake_trim() -> bool:
        done.append(1)
        trims[len(done) - 1].set()
        return True

    monkeypatch.setattr(memory, "trim", fake_trim)

    async def scenario() -> tuple[int, bool, int]:
        trimmer = memory.Trimmer(interval_s=0.05)
        for _ in range(5):
            trimmer.request()
        assert await asyncio.to_thread(trims[0].wait, 60)
        after_burst, idle = len(done), trimmer._pending is None
        for _ in range(5):  # inside the interval: one trim, at its end
            trimmer.request()
        assert await asyncio.to_thread(trims[1].wait, 60)
        return after_burst, idle, len(done)

    after_burst, idle, total = asyncio.run(scenario())
    assert (after_burst, idle, total) == (1, True, 2)


def test_trim_says_whether_it_ran() -> None:
    # Nothing else is trimming: it runs wherever the C library has malloc_trim.
    assert memory.trim() is (memory._TRIM is not None)
