"""Overload: a gateway offered 3x its maximum rate sheds with RESOURCE_EXHAUSTED / 429 at once,
answers every request it accepts, and serves at full rate again once the load drops.

The model is `sleepy` (loadtest/sleepy.py), so the maximum rate is the backend's, not the shared
CPUs'. Counts are asserted; latency ratios are measured by loadtest/faults.py instead.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from loadtest import faults

SLEEPY_BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32",
                                      "data": [0, 1, 2, 3]}]}).encode()


def post(port: int, path: str, body: bytes, timeout: float = 30.0) -> tuple[int, Any, dict]:
    """(status, headers, JSON body) of one HTTP POST; errors are answers too."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body,
                                     {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.headers, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def sleepy_stack(tmp: Path, delay: float, *gateway_args: str,
                 instances: int = 1) -> tuple[faults.Process, faults.Process, int, int]:
    """A sleepy runtime worker process and a gateway process: (runtime, gateway, http, grpc)."""
    lane = f"unix:{tmp}/lane.sock"
    runtime = faults.Process([sys.executable, "-m", "loadtest.sleepy", "--lane", lane,
                              "--listen", f"unix:{tmp}/grpc.sock", "--delay", str(delay),
                              "--instances", str(instances)])
    runtime.wait_for(faults.RUNTIME_READY)
    gateway = faults.Process(faults.tensorgate(
        "gateway", "--runtime", lane, "--host", "127.0.0.1", "--http-port", "0", "--grpc-port",
        "0", "--metrics-port", "-1", "--no-auth", "--registry", str(tmp / "registry.db"),
        *gateway_args))
    ready = gateway.wait_for(faults.GATEWAY_READY)
    return runtime, gateway, int(ready.group(1)), int(ready.group(2))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[faults.Process, int, int]]:
    runtime, gateway, http, grpc_port = sleepy_stack(tmp_path, 0.02, "--max-in-flight", "4")
    try:
        yield gateway, http, grpc_port
    finally:
        assert gateway.stop() == 0, gateway.output()
        assert runtime.stop() == 0, runtime.output()


def test_three_times_the_maximum_rate_is_shed_and_the_rest_answered(
        stack: tuple[faults.Process, int, int]) -> None:
    gateway, _, port = stack
    request = faults.sleepy_request()
    base, over, after = faults.Tally(16), faults.Tally(16), faults.Tally(16)
    max_rate = asyncio.run(faults.closed_loop(port, 3, 2.0, request, base))
    assert base.failures == [] and max_rate > 5
    rss = faults.rss_mib(gateway.popen.pid)

    asyncio.run(faults.open_loop(port, 3 * max_rate, 2.0, request, over))
    shed = over.codes()["RESOURCE_EXHAUSTED"]
    assert set(over.codes()) == {"RESOURCE_EXHAUSTED"}, over.codes()
    assert shed > 0 and over.latencies, (shed, len(over.latencies))
    assert all("overloaded" in message for _, _, message in over.failures)
    # NOTE: a bound of 4 in flight holds nothing much; a leak would show as tens of MiB.
    assert faults.rss_mib(gateway.popen.pid) < rss + 32

    rate = asyncio.run(faults.closed_loop(port, 3, 2.0, request, after))
    assert after.failures == []
    assert rate > max_rate / 2, (rate, max_rate)


def test_http_callers_past_the_bound_get_429_with_retry_after(
        stack: tuple[faults.Process, int, int]) -> None:
    _, http, _ = stack
    together = threading.Barrier(16)

    def call(_: int) -> tuple[int, Any, dict]:
        together.wait()
        return post(http, "/v2/models/sleepy/infer", SLEEPY_BODY)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(16)))
    statuses = sorted(status for status, _, _ in answers)
    assert set(statuses) == {200, 429}, statuses
    for status, headers, body in answers:
        if status == 200:
            assert body["outputs"][0]["data"] == [0, 2, 4, 6]
        else:
            assert headers["retry-after"] == "1"
            assert body["error"].startswith("gateway overloaded: 4 requests in flight")
