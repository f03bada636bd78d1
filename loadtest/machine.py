"""What the numbers depend on: cores, CPU, memory, versions, and the cost of a wake-up."""

from __future__ import annotations

import importlib.metadata
import multiprocessing as mp
import os
import platform
import time
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np


def _proc_field(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return "unknown"


def _version(*dists: str) -> str:
    for dist in dists:
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"{dists[0]} (not installed)"


def _onnxruntime() -> str:
    """The onnxruntime that imports, and its providers: a CPU and a GPU build can both be
    installed, and their distributions' metadata would not say which one runs."""
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"


def _echo(conn: Connection) -> None:
    while message := conn.recv_bytes():
        conn.send_bytes(message)


def wakeup_rtt_us(rounds: int = 2000) -> float:
    """Median round trip of one byte to a sleeping process and back: this machine's wake-up cost."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_echo, args=(child,), name="echo", daemon=True)
    proc.start()
    try:
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            parent.send_bytes(b"x")
            parent.recv_bytes()
            samples.append(time.perf_counter_ns() - t0)
            time.sleep(0.0002)  # let the echo process go back to sleep
        parent.send_bytes(b"")
        return float(np.median(samples)) / 1e3
    finally:
        parent.close()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def machine() -> dict[str, str]:
    memory = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": f"{len(os.sched_getaffinity(0))} (of {os.cpu_count()} on the machine)",
        "CPU": f"{_proc_field('/proc/cpuinfo', 'model name')}, "
               f"{_proc_field('/proc/cpuinfo', 'cpu MHz')} MHz",
        "memory": memory,
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join([_onnxruntime(), *(_version(*d) for d in (
            ("torch",), ("grpcio",), ("protobuf",),
            ("numpy",), ("uvloop",), ("uvicorn",), ("httptools",)))]),
        "cross-process wake-up round trip (pipe ping-pong, p50)": f"{wakeup_rtt_us():.0f} µs",
    }
