"""The benchmarks run end to end on this machine (tiny settings, real servers): `make bench`'s,
the in-process path cost, the scaling one and the GPU one."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import bench, gpu_bench, pathcost, scaling
from loadtest.report import FLOOR_GRPC, FLOOR_HTTP, GW_BINARY, GW_GRPC, RUNTIME, render


def test_the_bench_measures_floors_and_paths_and_holds_each_path_against_its_floor() -> None:
    opts = bench.parse_args(["--quick", "--models", "digits", "--no-open-loop",
                             "--duration", "0.5", "--warmup", "0.2"])
    results = bench.run(opts)
    assert not results.problems
    assert all(r.outcome.errors == 0 and r.outcome.rate > 0 for r in results.rows)
    paths = {(r.path, r.concurrency) for r in results.rows if r.model in ("-", "digits")}
    for path in (FLOOR_GRPC, FLOOR_HTTP, RUNTIME, GW_GRPC, GW_BINARY):
        assert {(path, 64), (path, 1)} <= paths
    assert list(results.alternating) == [FLOOR_GRPC, GW_GRPC, FLOOR_HTTP, GW_BINARY]
    assert all(len(rates) == 1 and rates[0] > 0 for rates in results.alternating.values())
    assert results.latency_turns is not None
    assert list(results.latency_turns.p50_ms) == [RUNTIME, GW_GRPC]
    assert all(len(p50) == 1 and p50[0] > 0 for p50 in results.latency_turns.p50_ms.values())
    text = render(results, opts.senders)
    assert "## Per-request cost: floors and gateway path in turn" in text
    assert "| digits, one caller | round 1 p50 µs |" in text
    assert "## Errors" not in text


def test_pathcost_times_each_stage_one_caller_and_many(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert pathcost.main(["--requests", "200"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| runtime") or line.startswith("| gateway")]
    stages = {(cells[0].lstrip("| "), int(cells[1])) for cells in rows}
    assert len(stages) == 8 and {c for _, c in stages} == set(pathcost.CONCURRENCY)
    assert all(float(cells[2].rstrip(" |")) > 0 for cells in rows)


def test_scaling_measures_each_process_count_over_both_protocols(tmp_path: Path) -> None:
    out = tmp_path / "scaling.md"
    code = scaling.main(["--processes", "1,2", "--runtimes", "1", "--duration", "0.5",
                         "--warmup", "0.2", "--concurrency", "8", "--connections", "2",
                         "--generator-threads", "1", "--out", str(out)])
    assert code == 0
    report = out.read_text()
    for protocol in ("grpc", "http"):
        for processes in (1, 2):
            assert f"| {protocol} | {processes} |" in report
    assert "| grpc | 1 | " in report and " | 1.00 | " in report


def test_gpu_bench_serves_the_half_precision_model_and_compares_it(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    code = gpu_bench.main(["--size", "16", "--precision", "fp16", "--device", "cpu",
                           "--max-batch", "4", "--workers", "1x1", "--gateway-processes", "1",
                           "--concurrency", "4", "--connections", "1", "--generator-threads",
                           "1", "--duration", "0.5", "--warmup", "0.2", "--ceiling-s", "0.1",
                           "--threads", "1", "--out", str(out)])
    assert code == 0
    report = out.read_text()
    assert "Ceiling: " in report and "providers of the in-process session: CPU" in report
    for path in ("runtime (gRPC)", "gateway → runtime, gRPC", "gateway → runtime, HTTP binary"):
        assert f"| 1x1 | {path} |" in report
    config = (gpu_bench.REPOS / "resnet50" / "resnet50" / "config.yaml").read_text()
    assert "datatype: FP16" in config and "device: cpu" in config


def test_gpu_bench_measures_the_path_alone_with_several_images_per_request(tmp_path: Path
                                                                          ) -> None:
    out = tmp_path / "passthrough.md"
    code = gpu_bench.main(["--model", "passthrough", "--rows", "2", "--paths", "grpc",
                           "--size", "16", "--device", "cpu", "--max-batch", "4", "--workers",
                           "1x1", "--gateway-processes", "1", "--concurrency", "4",
                           "--connections", "1", "--generator-threads", "1", "--duration",
                           "0.5", "--warmup", "0.2", "--ceiling-s", "0.1", "--threads", "1",
                           "--out", str(out)])
    assert code == 0
    report = out.read_text()
    assert "# GPU: passthrough" in report and "Served, 2 images per request" in report
    served = [line for line in report.splitlines() if line.startswith("| 1x1 |")]
    assert len(served) == 1 and "| gateway → runtime, gRPC |" in served[0]
    cells = [c.strip() for c in served[0].strip("|").split("|")]
    assert float(cells[3]) > 0 and cells[-1] == "0"  # rows/s, errors
    assert float(cells[9]) <= 4  # mean batch: at most --max-batch rows


def test_gpu_bench_serves_the_torchscript_model_beside_the_device_alone(tmp_path: Path
                                                                       ) -> None:
    out = tmp_path / "torch.md"
    code = gpu_bench.main(["--backend", "torch", "--paths", "grpc", "--size", "16",
                           "--precision", "fp16", "--device", "cpu", "--max-batch", "4",
                           "--workers", "1x1", "--gateway-processes", "1", "--concurrency", "4",
                           "--connections", "1", "--generator-threads", "1", "--duration",
                           "0.5", "--warmup", "0.2", "--ceiling-s", "0.1", "--threads", "1",
                           "--out", str(out)])
    assert code == 0
    report = out.read_text()
    assert "In-process (`TorchBackend`" in report and "PyTorch" in report
    assert "Alone on the device" in report and "times the device alone" in report
    served = [line for line in report.splitlines() if line.startswith("| 1x1 |")]
    assert len(served) == 1
    cells = [c.strip() for c in served[0].strip("|").split("|")]
    assert float(cells[3]) > 0 and float(cells[5]) > 0 and cells[-1] == "0"
    folder = gpu_bench.REPOS / "resnet50-torch" / "resnet50"
    assert (folder / "1" / "model.pt").is_file()
    config = (folder / "config.yaml").read_text()
    assert "backend: torch" in config and "datatype: FP16" in config
