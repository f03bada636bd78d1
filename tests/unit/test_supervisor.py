"""The `serve` supervisor's arithmetic: restart back-off and threads shared between workers."""

from __future__ import annotations

from tensorgate.supervisor import restart_delay, split_threads


def test_restart_back_off_doubles_to_ten_seconds_and_resets_after_thirty_up() -> None:
    delays = []
    delay = None
    for _ in range(8):
        delay = restart_delay(delay, uptime=1.0)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert restart_delay(10.0, uptime=29.0) == 10.0
    assert restart_delay(10.0, uptime=30.0) == 0.5


def test_threads_are_shared_out_at_least_one_each() -> None:
    assert split_threads(8, 1) == [8]
    assert split_threads(8, 3) == [3, 3, 2]
    assert split_threads(2, 4) == [1, 1, 1, 1]
    assert split_threads(4, 0) == [4]
