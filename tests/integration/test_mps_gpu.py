"""Where a GPU and NVIDIA's MPS control program are (and MPS serves clients there): `serve
--runtime-workers 2` starts a daemon of its own, both workers join it (their contexts are its
server's clients where ONNX Runtime runs digits on the GPU) and answer as the model does on the
CPU, and the daemon is gone once `serve` has stopped."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as thttp

from runtime.shm_api import gpu_visible
from tensorgate.mps import CONTROL, PIPE
from tests.integration.test_cli import READY, ROOT, start, wait_for
from tests.waiting import until

ROWS = np.random.default_rng(5).random((8, 64), dtype=np.float32)


def pgrep(*args: str) -> set[int]:
    found = subprocess.run(["pgrep", *args], capture_output=True, text=True, check=False)
    return {int(pid) for pid in found.stdout.split()}


def environ_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


def ask(pipe: str, command: str) -> str:
    return subprocess.run([CONTROL], input=command + "\n", env={PIPE: pipe}, text=True,
                          capture_output=True, timeout=30, check=True).stdout


def mps_clients(pipe: str) -> set[int]:
    """The pids of the CUDA contexts that every MPS server of the daemon at `pipe` serves."""
    servers = ask(pipe, "get_server_list").split()
    return {int(pid) for server in servers
            for pid in ask(pipe, f"get_client_list {server}").split()}


def expected() -> np.ndarray:
    session = ort.InferenceSession(str(ROOT / "models" / "digits" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: ROWS})[0]


def test_two_workers_share_the_gpu_through_a_daemon_of_their_own(tmp_path: Path) -> None:
    if not gpu_visible():
        pytest.skip("needs a CUDA GPU: none is visible")
    if shutil.which(CONTROL) is None or shutil.which("pgrep") is None:
        pytest.skip(f"needs {CONTROL} and pgrep on PATH")
    daemons = pgrep("-x", CONTROL)
    process, lines = start("serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
                           "--metrics-port", "-1", "--threads", "2", "--runtime-workers", "2",
                           "--gateway-processes", "1", "--mps", "auto", "--no-auth",
                           "--registry", str(tmp_path / "registry.db"))
    seen: list[str] = []
    try:
        ready = wait_for(lines, READY, seen)
        assert ready, "".join(seen)
        unused = next((line for line in seen if "CUDA MPS not used" in line), None)
        if unused is not None:  # NOTE: this machine's MPS refuses clients, as serve found
            pytest.skip(unused.strip())
        assert any("CUDA MPS control daemon started" in line for line in seen), "".join(seen)
        assert pgrep("-x", CONTROL) - daemons, "no control daemon of serve's own"
        workers = pgrep("-P", str(process.pid), "-f", "tensorgate runtime")
        assert len(workers) == 2, workers
        pipes = {environ_of(pid).get(PIPE) for pid in workers}
        pipe = pipes.pop()
        assert pipe and not pipes, "a worker not sent to MPS"
        if "CUDAExecutionProvider" in ort.get_available_providers():  # NOTE: digits on the GPU
            assert workers <= mps_clients(pipe), "a worker is no MPS client"
        client = thttp.InferenceServerClient(f"127.0.0.1:{ready.group(1)}")
        want = expected()
        for _ in range(4):  # NOTE: both workers answer, by the gateway's choice
            for i, row in enumerate(ROWS):
                tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
                tensor.set_data_from_numpy(row[None, :], binary_data=True)
                got = client.infer("digits", [tensor]).as_numpy("OUTPUT0")
                np.testing.assert_allclose(got[0], want[i], rtol=1e-3, atol=1e-4)
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, "".join(seen)
        until(lambda: not pgrep("-x", CONTROL) - daemons or None,
              "serve's control daemon gone after serve stopped")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
