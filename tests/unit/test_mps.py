"""CUDA MPS for `serve`'s runtime workers: when a daemon of serve's own is started, with what
environment the workers join it, that it quits after them, and what happens when it cannot start.
A stand-in for nvidia-cuda-mps-control records how it was called."""

from __future__ import annotations

import ctypes.util
import json
import logging
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from common.model_config import ConfigError
from tensorgate import cli, mps, supervisor
from tensorgate.mps import CONTROL, PIPE, VISIBLE, Clients, Plan

FOUND = f"/opt/nvidia/bin/{CONTROL}"


def found(name: str) -> str | None:
    return FOUND if name == CONTROL else None


def missing(name: str) -> None:
    return None


def no_gpu_asked() -> int:
    raise AssertionError("the GPUs were counted where the plan does not depend on them")


@pytest.mark.parametrize("mode, workers", [("off", 4), ("auto", 1), ("on", 1)])
def test_off_or_a_single_worker_starts_nothing(mode: str, workers: int) -> None:
    assert mps.plan(mode, workers, {}, found, no_gpu_asked) == Plan()


def test_auto_starts_a_daemon_where_the_program_and_a_gpu_are_found() -> None:
    chosen = mps.plan("auto", 2, {}, found, lambda: 1)
    assert chosen.binary == FOUND and not chosen.required and not chosen.warn
    assert "2 runtime workers" in chosen.note


def test_auto_without_a_gpu_starts_nothing_and_says_nothing() -> None:
    assert mps.plan("auto", 3, {}, found, lambda: 0) == Plan()


def test_auto_on_a_gpu_without_the_program_warns_that_contexts_take_turns() -> None:
    chosen = mps.plan("auto", 2, {}, missing, lambda: 1)
    assert chosen.binary is None and chosen.warn
    assert CONTROL in chosen.note and "takes its turn" in chosen.note


def test_on_without_the_program_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=f"--mps on: {CONTROL} is not on PATH"):
        mps.plan("on", 2, {}, missing, no_gpu_asked)


def test_on_starts_a_daemon_wherever_the_program_is() -> None:
    chosen = mps.plan("on", 2, {}, found, no_gpu_asked)
    assert chosen.binary == FOUND and chosen.required


def test_a_daemon_already_set_up_is_joined_not_started(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = mps.plan("on", 2, {PIPE: "/srv/mps"}, found, no_gpu_asked)
    assert chosen.binary is None and "/srv/mps" in chosen.note
    (tmp_path / "control").touch()
    monkeypatch.setattr(mps, "DEFAULT_PIPE", tmp_path)
    chosen = mps.plan("auto", 2, {}, found, no_gpu_asked)
    assert chosen.binary is None and str(tmp_path) in chosen.note


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected one of auto, on, off"):
        mps.plan("always", 2, {}, found, lambda: 1)


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A stand-in control program (its path) appending each call to a record (its path)."""
    record = tmp_path / "calls.jsonl"
    program = tmp_path / "bin" / CONTROL
    program.parent.mkdir()
    program.write_text(f"""#!{sys.executable}
import json, os, sys
quitting = sys.argv[1:] == []
with open({str(record)!r}, "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "pipe": os.environ.get("{PIPE}"),
                          "logs": os.environ.get("{mps.LOGS}"),
                          "visible": os.environ.get("{VISIBLE}"),
                          "stdin": sys.stdin.read() if quitting else ""}}) + "\\n")
code = int(os.environ.get("FAKE_MPS_EXIT_" + ("QUIT" if quitting else "START"), "0"))
if code:
    print("the stand-in was told to fail", file=sys.stderr)
sys.exit(code)
""")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.delenv(VISIBLE, raising=False)
    return str(program), record


def calls(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def test_the_daemon_starts_before_the_block_and_quits_after_it(
        control: tuple[str, Path], tmp_path: Path) -> None:
    program, record = control
    folder = tmp_path / "mps"
    with mps.daemon(Plan(binary=program), folder, probe=lambda clients: "") as clients:
        assert [c["argv"] for c in calls(record)] == [["-d"]]
        assert clients.env == {PIPE: str(folder / "pipe"), mps.LOGS: str(folder / "log")}
        assert calls(record)[0]["pipe"] == clients.env[PIPE]
        assert calls(record)[0]["logs"] == clients.env[mps.LOGS]
        assert stat.S_IMODE((folder / "pipe").stat().st_mode) == 0o700
        assert clients.unset == ()
    quit_call = calls(record)[1]
    assert quit_call["argv"] == [] and quit_call["stdin"] == "quit\n"
    assert quit_call["pipe"] == str(folder / "pipe")


def test_visible_devices_go_to_the_daemon_and_not_to_the_workers(
        control: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program, record = control
    monkeypatch.setenv(VISIBLE, "1")
    with mps.daemon(Plan(binary=program), tmp_path / "mps", probe=lambda clients: "") as clients:
        assert clients.unset == (VISIBLE,)
    assert calls(record)[0]["visible"] == "1"
    child = supervisor.runtime_child(tmp_path, tmp_path, 0, 1, clients=clients)
    environ = child.clients.environ({**os.environ, **child.env})
    assert VISIBLE not in environ
    assert environ[PIPE] == clients.env[PIPE]
    assert environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "metrics")


def test_a_worker_without_a_daemon_keeps_the_environment(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VISIBLE, "1")
    child = supervisor.runtime_child(tmp_path, tmp_path, 0, 1)
    environ = child.clients.environ({**os.environ, **child.env})
    assert environ[VISIBLE] == "1" and PIPE not in environ


def block(chosen: Plan, folder: Path, probe: Callable[[Clients], str],
          caplog: pytest.LogCaptureFixture, record: Path) -> tuple[Clients, list[list[str]]]:
    """What a block run under the daemon was given, and the control program's calls by then;
    the warnings go to `caplog`."""
    with caplog.at_level(logging.WARNING, "tensorgate"), \
            mps.daemon(chosen, folder, probe=probe) as clients:
        return clients, [c["argv"] for c in calls(record)]


def test_a_daemon_that_fails_to_start_leaves_the_workers_without_it(
        control: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    program, record = control
    monkeypatch.setenv("FAKE_MPS_EXIT_START", "3")
    assert block(Plan(binary=program), tmp_path / "mps", no_probe, caplog, record) == (
        Clients(), [["-d"]])
    assert "exit code 3: the stand-in was told to fail" in caplog.text
    assert "take turns on the GPU" in caplog.text
    assert [c["argv"] for c in calls(record)] == [["-d"]], "quit sent to a daemon never started"
    with pytest.raises(ConfigError, match=r"--mps on: CUDA MPS did not start: .*exit code 3"), \
            mps.daemon(Plan(binary=program, required=True), tmp_path / "mps", probe=no_probe):
        pass


def no_probe(clients: Clients) -> str:
    raise AssertionError("a daemon that did not start was probed")


def test_a_daemon_whose_clients_fail_is_quit_at_once(
        control: tuple[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    program, record = control
    refused = "cuCtxCreate returned CUDA error 805 through the MPS daemon"
    assert block(Plan(binary=program), tmp_path / "mps", lambda c: refused, caplog, record) == (
        Clients(), [["-d"], []]), "the daemon not quit before the workers start"
    assert refused in caplog.text
    assert [c["argv"] for c in calls(record)] == [["-d"], []], "quit twice"
    with pytest.raises(ConfigError, match="error 805"), \
            mps.daemon(Plan(binary=program, required=True), tmp_path / "mps",
                       probe=lambda c: refused):
        pass
    assert [c["argv"] for c in calls(record)] == [["-d"], [], ["-d"], []]


def test_a_daemon_that_does_not_quit_is_logged(
        control: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    program, record = control
    monkeypatch.setenv("FAKE_MPS_EXIT_QUIT", "1")
    clients, _ = block(Plan(binary=program), tmp_path / "mps", lambda c: "", caplog, record)
    assert clients.env and [c["argv"] for c in calls(record)] == [["-d"], []]
    assert "did not quit (exit code 1: the stand-in was told to fail)" in caplog.text


@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None,
                    reason="a CUDA driver is installed: a context may well be made")
def test_the_context_check_says_why_no_context_could_be_made(tmp_path: Path) -> None:
    said = mps.check_context(Clients({PIPE: str(tmp_path)}))
    assert said.startswith("a first CUDA context could not be made: no CUDA driver")


def test_serve_with_mps_on_and_no_program_stops_before_starting_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # NOTE: no control program on it
    code = cli.main(["serve", "--mps", "on", "--runtime-workers", "2", "--model-repository",
                     str(tmp_path / "models"), "--http-port", "0", "--grpc-port", "0",
                     "--metrics-port", "-1", "--registry", str(tmp_path / "registry.db")])
    assert code == 2
    assert f"--mps on: {CONTROL} is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "registry.db").exists(), "serve went on after the refusal"
