"""gpu_bench's shared-memory rows and GPU sampling without a server: what a missing
perf_analyzer, a refused CUDA region or a failed system-shared-memory run leave in the table, and
how perf_analyzer's errors are read."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtest import gpu_rows, shm_rows, triton_perf
from loadtest.cases import BatchPoint
from loadtest.gpu_report import COLUMNS, Row, served_line
from loadtest.gpu_util import Utilisation, gpu_index
from loadtest.loadgen import Outcome
from loadtest.servers import Children
from tests.waiting import polled

BEST = BatchPoint(8, 800.0, 10.0, 12.0)
ALONE = BatchPoint(8, 1000.0, 8.0, 9.0)


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_without_perf_analyzer_the_shared_memory_rows_say_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERF_ANALYZER", raising=False)
    monkeypatch.setattr(triton_perf.shutil, "which", lambda name: None)
    reason = shm_rows.unavailable()
    assert reason is not None and "perf_analyzer not found" in reason and "PERF_ANALYZER" in reason
    monkeypatch.setenv("PERF_ANALYZER", "/opt/pa/perf_analyzer")
    assert shm_rows.unavailable() is None and triton_perf.find() == "/opt/pa/perf_analyzer"


def test_perf_analyzer_errors_are_read_from_its_output() -> None:
    output = ("*** Measurement Settings ***\n"
              "error: failed to register CUDA shared memory region 'output0_data': "
              "CUDA shared memory is not built\n")
    assert triton_perf.said(output) == ("failed to register CUDA shared memory region "
                                        "'output0_data': CUDA shared memory is not built")
    assert triton_perf.said("Thread [0] had error: [StatusCode.UNAVAILABLE] gone") == \
        "Thread [0] had error: [StatusCode.UNAVAILABLE] gone"
    assert triton_perf.said("") == "no output"


@pytest.mark.parametrize(("key", "fails_the_bench"), [("cuda-grpc", False), ("shm-http", True)])
def test_a_refused_run_is_a_row_that_says_why(tmp_path: Path, key: str,
                                              fails_the_bench: bool) -> None:
    children = Children(tmp_path)
    row = Row("1x2", shm_rows.path_name(key))

    def refused() -> Outcome:
        raise triton_perf.PerfFailed("[StatusCode.UNIMPLEMENTED] the server's own words")

    opts = argparse.Namespace(device="cpu")
    gpu_rows.measured(row, refused, opts, children, [], cuda=key.startswith("cuda"))
    assert row.outcome is None
    word = "failed" if fails_the_bench else "not available"
    assert row.note == f"{word}: [StatusCode.UNIMPLEMENTED] the server's own words"
    assert bool(children.problems) is fails_the_bench
    line = served_line(row, 1, BEST, ALONE)
    found = cells(line)
    assert len(found) == len(COLUMNS) and found[2] == row.note
    assert set(found[3:]) == {"-"}


def test_a_measured_row_divides_by_the_ceiling_and_the_device_alone() -> None:
    outcome = Outcome("perf_analyzer -i grpc --shared-memory system --concurrency-range 4",
                      answered=1600, window_s=4.0, percentiles_ms={"50": 5.0, "99": 30.0},
                      server_cpu_s={"gateway": 2.0, "runtime0": 1.0})
    row = Row("1x2", shm_rows.path_name("shm-grpc"), outcome, None, (0.5, 0.25, 0.75), 87.5)
    found = cells(served_line(row, 2, BEST, ALONE))
    assert len(found) == len(COLUMNS)
    assert found[1] == "gateway → runtime, gRPC, system shared memory"
    assert found[3:6] == ["800", "1.00", "0.80"]  # 400 requests/s of 2 images
    assert found[8] == "3.0"  # p99 ÷ the ceiling's batch time
    assert found[12] == "0.5" and found[14] == "0.2"  # cores: gateways, runtimes
    assert found[-2:] == ["88", "0"]  # GPU busy %, errors


def test_gpu_utilisation_is_none_without_a_gpu() -> None:
    assert gpu_index("cuda:1") == 1 and gpu_index("cuda") == 0 and gpu_index("cpu") is None
    with Utilisation("cpu") as gpu:
        pass
    assert gpu.mean() is None
    # Where NVML sees a GPU, samples are percentages; elsewhere there are none.
    with Utilisation("cuda:0") as gpu:
        polled(lambda: gpu.mean() is not None or not gpu.available, 5, every_s=0.05)
    mean = gpu.mean()
    assert (mean is not None and 0 <= mean <= 100) if gpu.available else mean is None
