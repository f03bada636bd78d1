"""Faults injected into a running `serve`: runtime workers SIGKILLed under load (the code of
loadtest/faults.py, shorter), and a soak smoke whose open files must not grow."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from loadtest import faults, soak

CLEAN = re.compile(r"no healthy runtime worker|closed the connection|is unavailable|"
                   r"is not connected")


def test_probe_16_two_workers_killed_in_turn_under_load_cost_no_request(tmp_path: Path) -> None:
    # NOTE: events, not a timetable: each kill waits for answers and for the previous victim's
    # re-admission (kill_run raises if one never comes, within a ceiling of minutes).
    run = asyncio.run(faults.kill_run(2, 8, 2, tmp_path, after=50))
    assert run.tally.failures == [], run.tally.failures[:5]
    assert len(run.kills) == 2 and all(t < float("inf") for t in run.readmitted), run.readmitted
    # Answers kept coming after each re-admission, not only before the first kill.
    back = run.kills[-1] + run.readmitted[-1]
    assert sum(sent > back for sent in run.tally.sent) >= 50
    assert run.exit_code == 0


def test_probe_16_the_only_worker_killed_fails_cleanly_and_only_until_it_is_back(
        tmp_path: Path) -> None:
    run = asyncio.run(faults.kill_run(1, 4, 1, tmp_path, after=20))
    kill = run.kills[0]
    back = kill + run.readmitted[0]
    assert run.readmitted[0] < float("inf"), (run.restarts, run.readmitted)
    assert run.tally.failures, "a lone worker's death should be seen by someone"
    for (sent, code, message), failed in zip(run.tally.failures, run.tally.failed_at):
        assert code == "UNAVAILABLE" and CLEAN.search(message), (code, message)
        # In flight when it died or sent while it was down: it failed after the kill, and was
        # sent before the gateway said the restarted worker was back.
        assert failed >= kill and sent <= back, (sent - kill, failed - kill, back - kill)
    assert sum(sent > back for sent in run.tally.sent) >= 20
    assert run.exit_code == 0


@pytest.mark.skipif(shutil.which("h2load") is None,
                    reason="the soak drives gRPC with h2load (apt-get install nghttp2-client)")
def test_soak_smoke_has_no_errors_and_no_descriptor_growth() -> None:
    # NOTE: gRPC opens a few descriptors lazily over its first thousand or so calls: the
    # warm-up covers them, as the full soak's does.
    result = soak.run(2_000, warmup=2_000, at=(5, 10))
    assert result.failed == 0 and not result.errors, (result.failed, result.errors)
    assert max(result.fd_growth()) <= 0, (result.baseline, result.samples)
    assert result.samples[-1][0] == 2_000
