"""gpu_bench's shared-memory rows end to end with tiny settings: perf_analyzer puts the
passthrough model's tensors in system shared memory over gRPC and HTTP through a real gateway,
and CUDA shared memory, where it cannot run, leaves a row saying why instead of failing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from loadtest import gpu_bench
from loadtest.gpu_report import COLUMNS
from runtime.shm_api import gpu_visible


def perf_analyzer() -> str:
    found = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")
    if not found:
        pytest.skip("needs perf_analyzer: put it on PATH or name it in PERF_ANALYZER")
    return found


def test_gpu_bench_measures_system_shared_memory_and_says_why_cuda_is_not_there(
        tmp_path: Path) -> None:
    perf_analyzer()
    out = tmp_path / "shm.md"
    code = gpu_bench.main(["--model", "passthrough", "--paths", "shm-grpc,shm-http,cuda-grpc",
                           "--size", "16", "--device", "cpu", "--max-batch", "4", "--workers",
                           "1x1", "--gateway-processes", "1", "--concurrency", "4",
                           "--duration", "0.6", "--warmup", "0.2", "--ceiling-s", "0.1",
                           "--threads", "1", "--out", str(out)])
    assert code == 0
    report = out.read_text()
    served = {cells[1]: cells for cells in (
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in report.splitlines() if line.startswith("| 1x1 |"))}
    assert set(served) == {f"gateway → runtime, {p}, {k} shared memory"
                           for p, k in (("gRPC", "system"), ("HTTP", "system"),
                                        ("gRPC", "cuda"))}
    for protocol in ("gRPC", "HTTP"):
        cells = served[f"gateway → runtime, {protocol}, system shared memory"]
        assert len(cells) == len(COLUMNS)
        assert cells[2].startswith("perf_analyzer -i ") and "--shared-memory system" in cells[2]
        # rows/s, then ÷ ceiling and ÷ device alone (tiny here: the CPU's ceiling is huge)
        assert float(cells[3]) > 0 and min(float(cells[4]), float(cells[5])) >= 0
        assert cells[-1] == "0"
        assert 0 < float(cells[9]) <= 4  # the runtime batched what perf_analyzer sent
    cuda = served["gateway → runtime, gRPC, cuda shared memory"]
    if not gpu_visible():
        assert cuda[2] == "not available: needs a CUDA GPU: none is visible"
        assert set(cuda[3:]) == {"-"}
    else:  # measured, unless this perf_analyzer was built without GPU support
        assert "--shared-memory cuda" in cuda[2] or cuda[2].startswith("not available: ")
