"""Soak: a million requests through the gateway; memory, open files and errors sampled.

Run ``python -m loadtest.soak [--requests N]`` (h2load drives gRPC); prints gateway and runtime
RSS and file descriptors after warm-up and at 10/50/100 %, and the gateway's errors by code.
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
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.proto import grpc_service_pb2 as pb
from loadtest.tools import MissingTool, ensure

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


def settled_fds(pid: int, baseline: int) -> int:
    """Open descriptors once closing connections are gone: the least of a few samples, taken
    until one is back at `baseline` (h2load's last connections may still be closing)."""
    least = sample(pid)[1]
    for _ in range(20):
        if least <= baseline:
            break
        time.sleep(0.05)
        least = min(least, sample(pid)[1])
    return least


def errors(metrics_port: int) -> Counter[str]:
    """The gateway's inference answers that were not OK, by status code (from /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("tensorgate_requests_total{") and 'code="OK"' not in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            found[code] += int(float(line.rsplit(" ", 1)[1]))
    return found


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


@dataclass
class Soak:
    """Samples of (requests sent, gateway RSS KiB, gateway fds, runtime RSS KiB, runtime fds)."""

    baseline: tuple[int, int, int, int, int]
    samples: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def fd_growth(self) -> tuple[int, int]:
        """Descriptors gained since warm-up: gateway, runtime."""
        last = self.samples[-1]
        return last[2] - self.baseline[2], last[4] - self.baseline[4]


def run(total: int, warmup: int = 20_000, at: tuple[int, ...] = (1, 5, 10)) -> Soak:
    """Start a runtime and a gateway, warm up, then send `total` requests in ten steps."""
    tmp = Path(tempfile.mkdtemp(prefix="tensorgate-soak-"))
    grpc_body(tmp / "body")
    lane, grpc_port, metrics_port = f"unix:{tmp}/lane.sock", free_port(), free_port()
    python = [sys.executable, "-m", "tensorgate"]
    runtime = start([*python, "runtime", "--listen", f"unix:{tmp}/grpc.sock", "--lane", lane],
                    "tensorgate-runtime ready")
    gateway = start([*python, "gateway", "--runtime", lane, "--host", "127.0.0.1",
                     "--http-port", "0", "--grpc-port", str(grpc_port), "--metrics-port",
                     str(metrics_port), "--no-auth", "--registry", str(tmp / "registry.db")],
                    "tensorgate-gateway ready")
    try:
        return soak(total, warmup, at, grpc_port, metrics_port, tmp / "body", gateway.pid,
                    runtime.pid)
    finally:
        for process in (gateway, runtime):
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


def measure(sent: int, gateway: int, runtime: int,
            baseline: tuple[int, ...] | None = None) -> tuple[int, int, int, int, int]:
    g_rss, g_fd = sample(gateway)
    r_rss, r_fd = sample(runtime)
    if baseline is not None:
        g_fd, r_fd = settled_fds(gateway, baseline[2]), settled_fds(runtime, baseline[4])
    return sent, g_rss, g_fd, r_rss, r_fd


def soak(total: int, warmup: int, at: tuple[int, ...], port: int, metrics_port: int,
         body: Path, gateway: int, runtime: int) -> Soak:
    drive(port, body, warmup)
    result = Soak(measure(0, gateway, runtime))
    started = time.time()
    sent = 0
    for step in range(1, 11):
        ok, bad = drive(port, body, total // 10)
        sent, result.failed = sent + ok + bad, result.failed + bad
        if step in at:
            result.samples.append(measure(sent, gateway, runtime, result.baseline))
    result.seconds = time.time() - started
    result.errors = errors(metrics_port)
    return result


def report(result: Soak) -> None:
    print("| requests sent | gateway RSS MiB | gateway fds | runtime RSS MiB | runtime fds |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for sent, g_rss, g_fd, r_rss, r_fd in [result.baseline, *result.samples]:
        label = sent or "after warm-up"
        print(f"| {label} | {g_rss / 1024:.1f} | {g_fd} | {r_rss / 1024:.1f} | {r_fd} |")
    growth = result.fd_growth()
    codes = ", ".join(f"{code} {n}" for code, n in sorted(result.errors.items())) or "none"
    print(f"\n{result.samples[-1][0]} requests in {result.seconds:.0f} s; h2load failures "
          f"{result.failed}; gateway errors by code: {codes}; fds gained since warm-up: "
          f"gateway {growth[0]:+d}, runtime {growth[1]:+d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=20_000)
    args = parser.parse_args()
    try:
        ensure("h2load")
    except MissingTool as exc:
        print(f"loadtest.soak {exc}", file=sys.stderr)
        return 2
    result = run(args.requests, args.warmup)
    report(result)
    bad = result.failed or sum(result.errors.values()) or max(result.fd_growth()) > 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
