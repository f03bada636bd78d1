"""The prepared GPU session without a GPU: its plan (dry run), the budget that skips what no
longer fits, a step stopped at its limit, and what travels (a folder git ignores, every wheel
pinned to this environment's release)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest import gpu_carry, gpu_session

ROOT = Path(__file__).resolve().parents[2]


def run_session(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = gpu_session.main(["run", *argv])
    return code, capsys.readouterr().out


def test_the_dry_run_prints_every_step_and_runs_none(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    carry = tmp_path / "carry"
    (carry / "wheels").mkdir(parents=True)
    (carry / "wheels" / "fastapi-0-py3-none-any.whl").write_bytes(b"")  # never installed
    code, out = run_session(capsys, "--dry-run", "--out", str(tmp_path / "out"), "--carry",
                            str(carry), "--site", str(tmp_path / "site"))
    assert code == 0
    assert "install 1 wheels into" in out and not (tmp_path / "site").exists()
    for name in ("facts", "tests", "gpu-torch", "gpu-onnx", "gpu-mps"):
        assert f"would run {name}: " in out
    two = next(line for line in out.splitlines() if "would run gpu-mps" in line)
    assert two.endswith(f"--workers 2x1 --paths grpc,http --out {tmp_path / 'out' / 'gpu-mps.md'}")
    bench = next(line for line in out.splitlines() if "would run gpu-torch" in line)
    assert "--device cuda:0" in bench and "shm-grpc,shm-http,cuda-grpc,cuda-http" in bench
    onnx = next(line for line in out.splitlines() if "would run gpu-onnx" in line)
    assert "floor-grpc,floor-http" in bench and "floor" not in onnx  # the floors run once
    assert f"--out {tmp_path / 'out' / 'gpu-torch.md'}" in bench
    tests = next(line for line in out.splitlines() if "would run tests" in line)
    for path in gpu_session.TESTS:
        assert path in tests and (ROOT / path).is_file(), path
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["session.log"]


def test_steps_that_no_longer_fit_the_budget_are_skipped(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    code, out = run_session(capsys, "--device", "cpu", "--budget-s", "20", "--out",
                            str(tmp_path), "--carry", str(tmp_path / "none"))
    assert code == 0
    for name in ("facts", "tests", "gpu-torch", "gpu-onnx", "gpu-mps"):
        assert f"{name}: skipped: out of time" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.tar.gz", "session.log"]


def test_a_step_past_its_limit_is_stopped(tmp_path: Path) -> None:
    step = gpu_session.Step("slow", (sys.executable, "-c",
                                     "import time; print('started', flush=True); "
                                     "time.sleep(120)"), 120)
    log = gpu_session.Log(tmp_path)
    started = time.monotonic()
    assert gpu_session.run_step(step, tmp_path, {}, 0.5, log) == 124
    assert time.monotonic() - started < 60
    assert (tmp_path / "slow.log").read_text() == "started\n"
    assert "ran past its limit (SIGTERM)" in (tmp_path / "session.log").read_text()


def test_what_travels_is_ignored_by_git_and_pinned_here(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    carry = tmp_path / "loadtest" / ".gpu-carry"
    gpu_carry.fresh_folder(carry)
    (carry / "wheels").mkdir()
    (carry / "wheels" / "grpcio-1-cp312-cp312-linux_x86_64.whl").write_bytes(b"x")
    status = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain",
                             "--untracked-files=all"], capture_output=True, text=True, check=True)
    assert status.stdout == ""
    pins = gpu_carry.pinned()
    assert len(pins) == len(gpu_carry.WHEELS)
    assert all(pin.count("==") == 1 and pin.split("==")[1] for pin in pins)
    assert "grpcio==" + __import__("grpc").__version__ in pins


def test_without_h2load_and_wrk_the_benches_are_skipped_not_left_waiting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, out = run_session(capsys, "--device", "cpu", "--only", "gpu-torch", "--out",
                            str(tmp_path), "--carry", str(tmp_path / "none"))
    assert code == 0
    assert ("gpu-torch: skipped: h2load and wrk not found: run `python -m loadtest.gpu_session "
            "prepare`") in out
    assert not (tmp_path / "gpu-torch.log").exists()
