"""The prepared GPU session's smoke mode, end to end on the CPU: tiny sizes, the facts and the
TorchScript bench run, their logs and report land in the output folder, and nothing travelled."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import gpu_session
from loadtest.tools import hint, missing


def test_the_smoke_run_writes_the_facts_the_report_and_the_logs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for tool in missing("h2load"):
        pytest.skip(hint(tool))
    out = tmp_path / "out"
    code = gpu_session.main(["run", "--device", "cpu", "--only", "facts,gpu-torch", "--out",
                             str(out), "--carry", str(tmp_path / "nothing")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert sorted(p.name for p in out.iterdir()) == [
        "facts.log", "gpu-torch.log", "gpu-torch.md", "server-logs.tar.gz", "session.log"]
    assert "torch " in (out / "facts.log").read_text()
    report = (out / "gpu-torch.md").read_text()
    assert "--device cpu --size 16" in report and "| 1x1 | gateway → runtime, gRPC |" in report
    assert "| 1x1 | gateway → runtime, gRPC, system shared memory |" in report
    session = (out / "session.log").read_text()
    assert "gpu-torch: exit 0" in session and "every step that ran passed" in session
    # Progress goes to stdout as it happens, each bench line prefixed with its step.
    assert "  gpu-torch| building the model" in printed
