"""The command line as a user runs it: `serve` answers; a broken config exits non-zero."""

from __future__ import annotations

import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"tensorgate ready: HTTP :(\d+), gRPC :(\d+)")


def start(*args: str) -> tuple[subprocess.Popen, queue.Queue]:
    process = subprocess.Popen([sys.executable, "-m", "tensorgate", *args], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return process, lines


def wait_for(lines: queue.Queue, pattern: re.Pattern, seen: list[str]) -> re.Match | None:
    while True:
        line = lines.get(timeout=90)
        if line is None:
            return None
        seen.append(line)
        match = pattern.search(line)
        if match:
            return match


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int, int, list[str]]]:
    process, lines = start("serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port",
                           "0", "--metrics-port", "-1", "--threads", "1", "--registry",
                           str(tmp_path / "registry.db"))
    seen: list[str] = []
    try:
        match = wait_for(lines, READY, seen)
        assert match, "".join(seen)
        yield process, int(match.group(1)), int(match.group(2)), seen
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_serve_creates_an_admin_key_answers_with_it_and_stops_cleanly(
        served: tuple, tmp_path: Path) -> None:
    process, http_port, grpc_port, seen = served
    text = "".join(seen)
    printed = re.search(r"shown only this once\):\n\s+(tg_\S+)", text)
    assert printed, text
    key_file = tmp_path / "registry.admin-key"
    assert key_file.read_text().strip() == printed.group(1)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in text
    x = np.zeros((2, 64), np.float32)
    tensor = tgrpc.InferInput("INPUT0", [2, 64], "FP32")
    tensor.set_data_from_numpy(x)
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    with pytest.raises(InferenceServerException, match="missing credential"):
        client.infer("digits", [tensor])
    result = client.infer("digits", [tensor],
                          headers={"authorization": f"Bearer {printed.group(1)}"})
    assert result.as_numpy("OUTPUT0").shape == (2, 10)
    assert thttp.InferenceServerClient(f"127.0.0.1:{http_port}").is_model_ready("digits", "1")
    assert any("models ready: digits:1, digits:2" in line for line in seen)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def test_a_broken_config_exits_non_zero_naming_the_problem(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "digits", repo / "digits")
    (repo / "digits" / "config.yaml").write_text("max_batch_size: -3\n")
    process, lines = start("serve", "--model-repository", str(repo), "--http-port", "0",
                           "--grpc-port", "0", "--metrics-port", "-1")
    code = process.wait(90)
    output = []
    while (line := lines.get(timeout=10)) is not None:
        output.append(line)
    text = "".join(output)
    assert code != 0
    assert str(repo / "digits" / "config.yaml") in text
    assert "key 'max_batch_size': expected an integer >= 0, got -3" in text
