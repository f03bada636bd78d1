"""The prepared GPU session's smoke mode, end to end on the CPU: tiny sizes, the facts and the
TorchScript bench run, their report lands in the output folder and their logs in its archive, and
nothing travelled."""

from __future__ import annotations

import tarfile
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
    assert sorted(p.name for p in out.iterdir()) == ["gpu-torch.md", "logs.tar.gz",
                                                     "session.log"]
    with tarfile.open(out / "logs.tar.gz") as archive:
        names = archive.getnames()
        facts = archive.extractfile("steps/facts.log")
        assert facts is not None and "torch " in facts.read().decode()
    assert "steps/gpu-torch.log" in names
    assert any(name.startswith("servers/runtime") for name in names), names
    report = (out / "gpu-torch.md").read_text()
    assert "--device cpu --size 16" in report and "| 1x1 | gateway → runtime, gRPC |" in report
    assert "| 1x1 | gateway → runtime, gRPC, system shared memory |" in report
    session = (out / "session.log").read_text()
    assert "gpu-torch: exit 0" in session and "every step that ran passed" in session
    # Progress goes to stdout as it happens, each bench line prefixed with its step.
    assert "  gpu-torch| building the model" in printed
