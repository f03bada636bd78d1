"""The scaling and GPU benchmarks run end to end on this machine (tiny settings, real servers)."""

from __future__ import annotations

from pathlib import Path

from loadtest import gpu_bench, scaling


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
    config = (gpu_bench.REPO / "resnet50" / "config.yaml").read_text()
    assert "datatype: FP16" in config and "device: cpu" in config
