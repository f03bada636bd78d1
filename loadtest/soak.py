"""Memory soak: a million requests through the gateway, resident memory and open files sampled.

Run ``python -m loadtest.soak [--requests N]`` (h2load drives gRPC); prints a table of gateway
and runtime RSS and file descriptors at 10 %, 50 % and 100 % of the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common.proto import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def grpc_body(path: Path) -> None:
    request = pb.ModelInferRequest(model_name="digits", model_version="1")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.random.default_rng(0).random((1, 64), "<f4").tobytes())
    message = request.SerializeToString()
    path.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)


def sample(pid: int) -> tuple[int, int]:
    """Resident memory in KiB and open file descriptors of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def start(argv: list[str], ready: str) -> subprocess.Popen:
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(ready):
            return process
    raise RuntimeError(f"{argv[3]} exited before it was ready")


def drive(port: int, body: Path, count: int) -> tuple[int, int]:
    """Send `count` requests with h2load; returns (succeeded, failed)."""
    out = subprocess.run(
        ["h2load", "-n", str(count), "-c", "4", "-m", "16", "-t", "1", "-d", str(body),
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"],
        capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("requests:"))
    words = line.replace(",", "").split()
    return int(words[words.index("succeeded") - 1]), int(words[words.index("failed") - 1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("soak needs h2load (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="tensorgate-soak-"))
    grpc_body(tmp / "body")
    lane, grpc_port = f"unix:{tmp}/lane.sock", free_port()
    python = [sys.executable, "-m", "tensorgate"]
    runtime = start([*python, "runtime", "--listen", f"unix:{tmp}/grpc.sock", "--lane", lane],
                    "tensorgate-runtime ready")
    gateway = start([*python, "gateway", "--runtime", lane, "--host", "127.0.0.1",
                     "--http-port", "0", "--grpc-port", str(grpc_port), "--metrics-port", "-1",
                     "--no-auth"],
                    "tensorgate-gateway ready")
    try:
        return soak(args.requests, grpc_port, tmp / "body", gateway.pid, runtime.pid)
    finally:
        for process in (gateway, runtime):
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def soak(total: int, port: int, body: Path, gateway: int, runtime: int) -> int:
    drive(port, body, 20_000)  # warm-up
    print("| requests sent | gateway RSS MiB | gateway fds | runtime RSS MiB | runtime fds |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    sent = failed = 0
    started = time.time()
    for step in range(1, 11):
        ok, bad = drive(port, body, total // 10)
        sent, failed = sent + ok + bad, failed + bad
        if step in (1, 5, 10):
            g_rss, g_fd = sample(gateway)
            r_rss, r_fd = sample(runtime)
            print(f"| {sent} | {g_rss / 1024:.1f} | {g_fd} | {r_rss / 1024:.1f} | {r_fd} |")
    print(f"\n{sent} requests in {time.time() - started:.0f} s, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
