"""What test_netns runs inside its namespaces: a TLS runtime worker, a load loop, one slow
call, and a count of a worker's answers. `python -m tests.integration.netns_roles ROLE ...`"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from loadtest import faults

ROOT = Path(__file__).resolve().parents[2]
ANSWERED = "tensorgate_runtime_request_duration_seconds"


def worker(args: argparse.Namespace) -> int:
    """A runtime worker serving digits and `sleepy`, its lane over mTLS."""
    from common.settings import RuntimeSettings
    from loadtest.sleepy import sleepy_model, store_with
    from tensorgate.roles import run_runtime

    settings = RuntimeSettings(
        model_repository=ROOT / "models", listen=args.listen, lane=args.lane, threads=1,
        metrics_port=args.metrics_port, drain_timeout_s=1.0, tls_cert=Path(args.cert),
        tls_key=Path(args.key), tls_client_ca=Path(args.ca))
    release = threading.Event()
    try:
        return run_runtime(settings, store_with(settings, sleepy_model(args.delay, 1, release)))
    finally:
        release.set()  # a sleeping call returns, so the exit need not wait for it


async def _load(args: argparse.Namespace) -> None:
    """Callers in a closed loop until stdin closes or a bound is reached; a line per outcome."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.run_in_executor(None, _wait_for_stdin, loop, stop)
    request = faults.digits_request()
    ends = time.monotonic() + args.seconds
    sent = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        call = channel.unary_unary(faults.METHOD)

        async def caller(n: int) -> None:
            nonlocal sent
            while not stop.is_set() and sent < args.count and time.monotonic() < ends:
                sent += 1
                try:
                    await call(request, timeout=args.timeout)
                except grpc.aio.AioRpcError as exc:
                    print("fail", n, exc.code().name, exc.details(), flush=True)
                else:
                    print("ok", n, flush=True)
                # NOTE: pacing the load generator, so the bounds last through every phase.
                await asyncio.sleep(args.interval)

        await asyncio.gather(*(caller(n) for n in range(args.callers)))
    print("done", flush=True)


def _wait_for_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    sys.stdin.readline()
    loop.call_soon_threadsafe(stop.set)


def slow(args: argparse.Namespace) -> int:
    """One HTTP call to `sleepy` whose deadline is the Triton `timeout` parameter."""
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4],
                                   "data": [0, 1, 2, 3]}],
                       "parameters": {"timeout": int(args.deadline * 1e6)}})
    connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=args.ceiling)
    print("sending", flush=True)
    began = time.monotonic()
    try:
        connection.request("POST", "/v2/models/sleepy/infer", body,
                           {"Content-Type": "application/json"})
        answer = connection.getresponse()
        status, text = answer.status, answer.read().decode(errors="replace")
    except OSError as exc:  # a hang ends here, at the ceiling
        status, text = 0, repr(exc)
    print("result", status, f"{time.monotonic() - began:.3f}", text[:300], flush=True)
    return 0


def count(args: argparse.Namespace) -> int:
    """How many requests for `digits` this worker answered (from its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{args.metrics_port}/metrics",
                                timeout=30) as page:
        text = page.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == ANSWERED:
            total += sum(s.value for s in family.samples
                         if s.name.endswith("_count") and s.labels.get("model") == "digits")
    print(int(total), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)
    w = roles.add_parser("worker")
    for flag in ("--lane", "--listen", "--cert", "--key", "--ca"):
        w.add_argument(flag, required=True)
    w.add_argument("--metrics-port", type=int, required=True)
    w.add_argument("--delay", type=float, default=60.0)
    load = roles.add_parser("load")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--callers", type=int, default=4)
    load.add_argument("--count", type=int, default=5000)
    load.add_argument("--seconds", type=float, default=100.0)
    load.add_argument("--timeout", type=float, default=30.0)
    load.add_argument("--interval", type=float, default=0.02)
    s = roles.add_parser("slow")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--deadline", type=float, required=True)
    s.add_argument("--ceiling", type=float, default=90.0)
    c = roles.add_parser("count")
    c.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    if args.role == "load":
        asyncio.run(_load(args))
        return 0
    return {"worker": worker, "slow": slow, "count": count}[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
