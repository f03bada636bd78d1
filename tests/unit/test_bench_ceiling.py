"""The bench's in-process ceiling: sessions side by side each run on their own thread; the
callers that fill a compute-heavy model's batches; the ceiling and the gateway path in turn."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from loadtest.bench import concurrencies, measure_ceiling_in_turn, parse_args
from loadtest.cases import (
    BATCH_SIZES,
    ROOT,
    BatchPoint,
    Case,
    backends_for,
    ceiling,
    digits_without_delay,
    fill_requests,
    time_batch,
)
from loadtest.inturn import Run, ceiling_run, take_turns
from loadtest.report import Results


class CountingBackend:
    """Counts calls and the threads that made them."""

    def __init__(self) -> None:
        self.calls = 0
        self.threads: set[int] = set()

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        self.threads.add(threading.get_ident())
        return [feeds[0] * 2]


def test_sessions_side_by_side_each_run_on_their_own_thread() -> None:
    backends = [CountingBackend(), CountingBackend()]
    point = time_batch(backends, np.ones((4, 3), np.float32), 0.05)  # type: ignore[arg-type]
    assert point.instances == 2 and point.batch == 4
    assert all(b.calls > 5 for b in backends)
    # NOTE: the warm-up calls come from the calling thread; the timed ones from one each.
    workers = (backends[0].threads | backends[1].threads) - {threading.get_ident()}
    assert len(workers) == 2
    assert point.rows_per_s > 0 and point.p50_ms <= point.p99_ms


def test_the_layout_names_the_sessions_only_when_several() -> None:
    assert BatchPoint(32, 1.0, 1.0, 1.0).layout == "batch 32"
    assert BatchPoint(32, 1.0, 1.0, 1.0, instances=2).layout == "batch 32, 2 instances"


def test_a_compute_heavy_model_also_runs_with_callers_that_fill_its_batches() -> None:
    opts = parse_args([])
    resnet = BatchPoint(batch=16, rows_per_s=190.0, p50_ms=167.0, p99_ms=182.0, instances=2)
    digits = BatchPoint(batch=64, rows_per_s=1e6, p50_ms=0.1, p99_ms=0.2, instances=2)
    assert concurrencies(opts, resnet, 256) == (64, 1, 256)
    assert concurrencies(opts, digits, 256) == (64, 1)  # its serving, not its batch, is the cost
    assert concurrencies(opts, resnet, 32) == (64, 1)  # 64 callers fill 2 x 16 rows already
    assert concurrencies(opts, None, 256) == (64, 1)
    assert concurrencies(parse_args(["--no-fill"]), resnet, 256) == (64, 1)


def test_the_sweep_tries_batches_past_the_served_configs_cap(tmp_path: Path) -> None:
    folder = digits_without_delay(tmp_path / "digits")
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("max_batch_size: 64", "max_batch_size: 8"))
    assert "max_batch_size: 8" in config.read_text()
    case = Case("digits", "1", folder)
    fill_requests(case)
    points = ceiling(case, 1, 0.02)
    assert [p.batch for p in points] == list(BATCH_SIZES)
    assert case.expected is not None


def test_fill_callers_keep_every_instance_in_full_batches_with_the_next_queued(
        tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.yaml").write_text(
        "max_batch_size: 32\ninstance_count: 3\ninputs:\n  - {name: X, datatype: FP32, "
        "shape: [4]}\noutputs:\n  - {name: Y, datatype: FP32, shape: [4]}\n")
    assert Case("m", "1", folder).fill_callers() == 2 * 3 * 32


def test_paths_in_turn_run_in_plan_order_round_after_round() -> None:
    ran: list[str] = []

    def run(name: str, rate: float) -> Run:
        def measure() -> tuple[float, float, float]:
            ran.append(name)
            return rate + len(ran), 1.0, 2.0
        return measure

    turns = take_turns([("ceiling", run("ceiling", 100.0)), ("path", run("path", 50.0))], 2)
    assert ran == ["ceiling", "path", "ceiling", "path"]
    assert turns.rates == {"ceiling": [101.0, 103.0], "path": [52.0, 54.0]}
    assert turns.p50_ms["path"] == [1.0, 1.0] and turns.p99_ms["ceiling"] == [2.0, 2.0]


def test_the_ceiling_in_turn_builds_the_sweeps_best_layout() -> None:
    case = Case("digits", "1", ROOT / "models" / "digits")
    fill_requests(case)
    threads = [b.session.get_session_options().intra_op_num_threads  # type: ignore[attr-defined]
               for b in backends_for(case, 2, 2)]
    assert threads == [1, 1]
    assert [b.session.get_session_options().intra_op_num_threads  # type: ignore[attr-defined]
            for b in backends_for(case, 1, 2)] == [2]
    best = BatchPoint(batch=8, rows_per_s=1.0, p50_ms=1.0, p99_ms=1.0, instances=2)
    rate, p50, p99 = ceiling_run(case, best, 2, 0.05)()
    assert rate > 0 and 0 < p50 <= p99


def test_only_a_compute_heavy_model_gets_its_ceiling_in_turn() -> None:
    results = Results(machine={}, command="python -m loadtest.bench", threads=2)
    results.sweeps["digits"] = [BatchPoint(batch=64, rows_per_s=1e6, p50_ms=0.1, p99_ms=0.2)]
    case = Case("digits", "1", ROOT / "models" / "digits")
    measure_ceiling_in_turn(parse_args([]), None, case, {}, results)  # type: ignore[arg-type]
    assert results.ceiling_turns == {}
