"""The collector's tuning: a burst of allocations like a loaded server's triggers no collection."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from common.gc_tuning import YOUNG_THRESHOLD
from loadtest.gcwatch import line, watch

# Run in a child: the collector's thresholds are process-wide and must not leak into the tests.
_BURST = """
import gc, sys
from common.gc_tuning import tune_collector
if sys.argv[1] == "tuned":
    tune_collector()
collections = []
gc.callbacks.append(lambda phase, info: phase == "stop" and collections.append(info))
gc.collect()
collections.clear()
for _ in range(20):
    held = [[i] for i in range(1500)]  # what requests in flight hold for a moment
    del held
print(len(collections), *gc.get_threshold())
"""


def _burst(mode: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", _BURST, mode], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[2])
    return [int(word) for word in done.stdout.split()]


def test_a_burst_of_allocations_collects_nothing_once_tuned() -> None:
    count, young, middle, old = _burst("tuned")
    assert (young, middle, old) == (YOUNG_THRESHOLD, 10, 10)
    assert count == 0


def test_the_same_burst_collects_under_pythons_default() -> None:
    count, young, *_ = _burst("default")
    if young >= 1500:
        pytest.skip(f"this Python's young threshold is {young}: the burst stays under it")
    assert count >= 20


def test_gcwatch_counts_and_times_each_generation() -> None:
    tally = watch()
    try:
        gc.collect()
        gc.collect(0)
    finally:
        gc.callbacks.pop()
    # NOTE: the young count is at least one: an automatic collection may slip in between.
    assert tally[2][0] == 1 and tally[0][0] >= 1
    assert tally[2][1] > 0
    assert line(tally).startswith("gc: young ") and ", full 1 in " in line(tally)
