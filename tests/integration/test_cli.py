"""The command line as a user runs it: `serve` answers; a broken config or a port already taken
exits non-zero with one line saying why, before anything starts."""

from __future__ import annotations

import http.client
import json
import queue
import re
import shutil
import signal
import socket
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

from tensorgate.cli import build_parser

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


def rest(lines: queue.Queue, seen: list[str]) -> str:
    """Everything the process wrote, once it has closed its output."""
    while (line := lines.get(timeout=60)) is not None:
        seen.append(line)
    return "".join(seen)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    found = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return found


def ready_status(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/v2/health/ready")
        return connection.getresponse().status
    finally:
        connection.close()


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line holds `text` (a test's own temporary path)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue  # gone since the listing
    return found


def serve_on(registry: Path, *ports: str) -> list[str]:
    return ["serve", "--host", "127.0.0.1", *ports, "--threads", "1", "--registry", str(registry)]


def test_probe_12_a_second_serve_on_the_same_ports_refuses_and_names_the_first(
        tmp_path: Path) -> None:
    http_port, grpc_port = free_ports(2)
    flags = ("--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", "-1")
    first, first_lines = start(*serve_on(tmp_path / "a.db", *flags), "--gateway-processes", "2")
    try:
        seen: list[str] = []
        assert wait_for(first_lines, READY, seen), "".join(seen)
        second, second_lines = start(*serve_on(tmp_path / "b.db", *flags))
        code = second.wait(60)
        text = rest(second_lines, [])
        assert code != 0, text
        named = [line for line in text.splitlines() if f"--http-port {http_port}" in line]
        assert len(named) == 1, text
        assert f"pid {first.pid}" in named[0]
        assert "started (pid" not in text and "Traceback" not in text
        # The first keeps serving alone: every connection lands on its gateways.
        assert [ready_status(http_port) for _ in range(6)] == [200] * 6
        assert first.poll() is None
        # The image's HEALTHCHECK finds the port in the served process's own flags.
        health = subprocess.run([sys.executable, "-m", "tensorgate", "health", "--pid",
                                 str(first.pid)], cwd=ROOT, capture_output=True, timeout=60)
        assert health.returncode == 0, health.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)


@pytest.mark.parametrize("flag", ["--http-port", "--metrics-port"])
def test_probe_15_a_port_held_by_another_program_is_one_line_before_anything_starts(
        tmp_path: Path, flag: str) -> None:
    registry = tmp_path / "registry.db"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        ports = {"--http-port": "0", "--grpc-port": "0", "--metrics-port": "-1", flag: str(port)}
        process, lines = start(*serve_on(registry, *(x for kv in ports.items() for x in kv)))
        code = process.wait(60)
        text = rest(lines, [])
    assert code != 0, text
    assert "Traceback" not in text, text
    named = [line for line in text.splitlines() if f"{flag} {port}" in line]
    assert len(named) == 1 and "in use" in named[0], text
    assert "started (pid" not in text, text
    assert not (tmp_path / "registry.admin-key").exists()  # refused before the first admin key
    assert processes_naming(str(tmp_path)) == []


def test_probe_20_log_format_is_accepted_after_the_command() -> None:
    parser = build_parser()
    after = parser.parse_args(["serve", "--log-format", "json", "--log-level", "DEBUG"])
    assert (after.log_format, after.log_level) == ("json", "DEBUG")
    before = parser.parse_args(["--log-format", "json", "serve"])
    assert before.log_format == "json"
    assert parser.parse_args(["keys", "list", "--log-format", "json"]).log_format == "json"


def test_probe_20_an_empty_repository_warns_and_a_stop_is_clean(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    process, lines = start(*serve_on(tmp_path / "r.db", "--http-port", "0", "--grpc-port", "0",
                                     "--metrics-port", "-1"),
                           "--model-repository", str(empty), "--no-auth", "--log-format", "json")
    seen: list[str] = []
    try:
        assert wait_for(lines, READY, seen), "".join(seen)
    finally:
        process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    text = rest(lines, seen)
    records = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    warned = [r for r in records if "holds no models" in r.get("message", "")]
    assert len(warned) == 1 and warned[0]["level"] == "WARNING", text
    assert str(empty) in warned[0]["message"]
    # prometheus_client warned at every stop that labels cannot be removed in multiprocess mode.
    assert "Warning" not in text, text
