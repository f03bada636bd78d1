"""Failover with real processes: a runtime worker killed under load costs no request.

Two `tensorgate runtime` processes behind an in-process gateway; then `serve --runtime-workers 2`,
whose supervisor restarts the worker it loses.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from common.settings import AuthSettings, GatewaySettings
from gateway.app import Gateway
from tests.integration.test_cli import READY, start, wait_for
from tests.waiting import until

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_READY = re.compile(r"tensorgate-runtime ready grpc=\S+ lane=(\S+)")


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return (load_digits().data[:32] / 16.0).astype(np.float32)


@pytest.fixture(scope="module")
def expected(rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(ROOT / "models" / "digits" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(["OUTPUT0"], {"INPUT0": rows})[0]


@pytest.fixture
def workers() -> Iterator[list[tuple[subprocess.Popen, str]]]:
    """Two runtime worker processes on ports the system picks, and their lane addresses."""
    argv = [sys.executable, "-m", "tensorgate", "runtime", "--model-repository",
            str(ROOT / "models"), "--listen", "127.0.0.1:0", "--lane", "127.0.0.1:0",
            "--threads", "1"]
    processes = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    try:
        lanes = []
        for process in processes:
            assert process.stdout is not None
            match = RUNTIME_READY.search(process.stdout.readline())
            assert match, "a runtime worker did not announce itself"
            lanes.append(match.group(1))
        yield list(zip(processes, lanes, strict=True))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)


class GatewayThread:
    """An in-process gateway on its own event loop, so blocking clients can call it."""

    def __init__(self, lanes: list[str]) -> None:
        self.settings = GatewaySettings(host="127.0.0.1", http_port=0, grpc_port=0,
                                        metrics_port=-1, runtime_endpoints=tuple(lanes),
                                        health_interval_s=0.2,
                                        auth=AuthSettings(enabled=False))
        self.loop = asyncio.new_event_loop()
        self.gateway = Gateway(self.settings, registry=CollectorRegistry())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.stop(grace=1.0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Load:
    """Client threads calling in a loop until stopped; every failure and wrong answer is kept."""

    calls: list[Callable[[np.ndarray], np.ndarray]]
    rows: np.ndarray
    expected: np.ndarray
    done: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, call: Callable[[np.ndarray], np.ndarray], seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            first = int(rng.integers(0, len(self.rows) - 4))
            try:
                got = call(self.rows[first:first + 3])
                np.testing.assert_allclose(got, self.expected[first:first + 3], rtol=1e-5,
                                           atol=1e-6)
            except (InferenceServerException, AssertionError) as exc:
                self.failures.append(repr(exc))
            self.done += 1

    def until(self, count: int, limit_s: float = 60.0) -> None:
        until(lambda: self.done >= count, f"{count} calls done", limit_s,
              on_timeout=lambda: f"only {self.done} calls")

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.run, args=(call, i), daemon=True)
                        for i, call in enumerate(self.calls)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def grpc_caller(port: int) -> Callable[[np.ndarray], np.ndarray]:
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")

    def call(x: np.ndarray) -> np.ndarray:
        tensor = tgrpc.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("digits", [tensor], model_version="1",
                            client_timeout=60).as_numpy("OUTPUT0")

    return call


def http_caller(port: int) -> Callable[[np.ndarray], np.ndarray]:
    client = thttp.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)

    def call(x: np.ndarray) -> np.ndarray:
        tensor = thttp.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("digits", [tensor], model_version="1").as_numpy("OUTPUT0")

    return call


def test_a_worker_killed_under_load_costs_no_request_and_both_gone_fail_fast(
        workers: list, rows: np.ndarray, expected: np.ndarray) -> None:
    (first, _), (second, _) = workers
    with GatewayThread([lane for _, lane in workers]) as running:
        gateway = running.gateway
        grpc_port, http_port = gateway.grpc_port, gateway.http_port
        callers = [grpc_caller(grpc_port) for _ in range(4)]
        callers += [http_caller(http_port) for _ in range(2)]
        with Load(callers, rows, expected) as load:
            load.until(60)
            first.send_signal(signal.SIGKILL)
            load.until(load.done + 150)
        assert load.failures == []
        assert [e.admitted for e in gateway.router.endpoints] == [False, True]

        second.send_signal(signal.SIGKILL)
        second.wait(10)
        for call, unavailable in ((grpc_caller(grpc_port), "StatusCode.UNAVAILABLE"),
                                  (http_caller(http_port), "503")):
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(InferenceServerException) as caught:
                    call(rows[:2])
                # NOTE: refused at once, not after the 60 s default deadline; the ceiling is
                # generous so that a loaded machine cannot fail it.
                assert time.monotonic() - started < 30.0
                assert caught.value.status() == unavailable
                assert re.search(r"no healthy runtime worker|unavailable|closed the connection",
                                 caught.value.message() or ""), caught.value.message()
        assert caught.value.message() == "model 'digits': no healthy runtime worker (2 ejected)"


def test_serve_restarts_a_killed_runtime_worker_while_requests_go_on(
        rows: np.ndarray, expected: np.ndarray) -> None:
    process, lines = start("serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port",
                           "0", "--metrics-port", "-1", "--threads", "2", "--runtime-workers",
                           "2", "--gateway-processes", "1", "--no-auth")
    seen: list[str] = []
    try:
        ready = wait_for(lines, READY, seen)
        assert ready, "".join(seen)
        pids = dict(re.findall(r"(runtime-\d) started \(pid (\d+)\)", "".join(seen)))
        assert set(pids) == {"runtime-0", "runtime-1"}, "".join(seen)
        with Load([grpc_caller(int(ready.group(2))) for _ in range(3)], rows,
                  expected) as load:
            load.until(30)
            os.kill(int(pids["runtime-0"]), signal.SIGKILL)
            restarted = wait_for(lines, re.compile(r"runtime-0 restarted \(pid (\d+)\)"), seen)
            assert restarted, "".join(seen)
            load.until(load.done + 30)
        assert load.failures == []
        assert any(f"runtime-0 (pid {pids['runtime-0']}) exited with code -9; restarting it in "
                   "0.5s" in line for line in seen), "".join(seen)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
