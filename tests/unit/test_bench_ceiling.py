"""The bench's in-process ceiling: sessions side by side each run on their own thread; the
callers that fill a compute-heavy model's batches."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from loadtest.bench import concurrencies, parse_args
from loadtest.cases import BatchPoint, Case, time_batch


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


def test_fill_callers_keep_every_instance_in_full_batches_with_the_next_queued(
        tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.yaml").write_text(
        "max_batch_size: 32\ninstance_count: 3\ninputs:\n  - {name: X, datatype: FP32, "
        "shape: [4]}\noutputs:\n  - {name: Y, datatype: FP32, shape: [4]}\n")
    assert Case("m", "1", folder).fill_callers() == 2 * 3 * 32
