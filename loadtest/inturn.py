"""Paths measured in turn, round after round, every server up throughout, so a drift of this VM
touches both sides of a ratio alike: the floors against the gateway path (issue 3, target 1) and
a compute-heavy model's in-process ceiling against its gateway path (target 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from loadtest.cases import BatchPoint, Case, backends_for, random_batch, time_batch
from loadtest.loadgen import Load, Meter, Target, closed_loop

#: One measurement: requests/s (rows/s in-process), p50 ms and p99 ms.
Run = Callable[[], tuple[float, float, float]]
Check = Callable[[], object]


@dataclass
class Turns:
    """What each path measured, one entry per round, in the order the paths ran."""

    rates: dict[str, list[float]] = field(default_factory=dict)
    p50_ms: dict[str, list[float]] = field(default_factory=dict)
    p99_ms: dict[str, list[float]] = field(default_factory=dict)


def take_turns(plan: list[tuple[str, Run]], rounds: int) -> Turns:
    """Every run of `plan` in order, `rounds` times over."""
    turns = Turns({n: [] for n, _ in plan}, {n: [] for n, _ in plan}, {n: [] for n, _ in plan})
    for _ in range(rounds):
        for name, run in plan:
            rate, p50, p99 = run()
            turns.rates[name].append(rate)
            turns.p50_ms[name].append(p50)
            turns.p99_ms[name].append(p99)
            print(f"  in turn {name}: {rate:8.0f}/s, p99 {p99:.3f} ms", flush=True)
    return turns


def load_run(name: str, target: Target, check: Check, load: Load, meter: Meter,
             problems: list[str]) -> Run:
    """A closed-loop run of `target`, its answer checked before and after; errors are noted
    in `problems` under `name`."""
    def run() -> tuple[float, float, float]:
        check()
        outcome = closed_loop(target, load, meter)
        check()
        if outcome.errors:
            problems.append(f"{name} in turn: {outcome.errors} errors, first: "
                            f"{outcome.first_error}")
        return outcome.rate, outcome.p("50"), outcome.p("99")
    return run


def ceiling_run(case: Case, point: BatchPoint, threads: int, seconds: float) -> Run:
    """Back-to-back calls in this process at the ceiling's layout and batch size."""
    backends = backends_for(case, point.instances, threads)
    x = random_batch(case, point.batch)

    def run() -> tuple[float, float, float]:
        timed = time_batch(backends, x, seconds)
        return timed.rows_per_s, timed.p50_ms, timed.p99_ms
    return run
