"""Fault figures: runtime workers SIGKILLed under load, and a gateway offered 3x its maximum rate.

    python -m loadtest.faults [--seconds 60] [--callers 32] [--kill-every 10]

Kills wait for events (answers since the last one, the previous victim re-admitted), so on a
busy machine a run takes longer than --seconds rather than failing on a timetable.

Prints a Markdown table per scenario; tests/integration/test_faults.py runs the same code, shorter.

Its load is the one Python generator kept (grpc.aio): the scenarios act on each answer as it
comes (kill after N answers, wait for a re-admission) and count failures by gRPC status code,
which h2load, the benchmarks' generator, does not read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from common.proto import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
METHOD = "/inference.GRPCInferenceService/ModelInfer"
SERVE_READY = re.compile(r"tensorgate ready: HTTP :(\d+), gRPC :(\d+)")
GATEWAY_READY = re.compile(r"tensorgate-gateway ready http=(\d+) grpc=(\d+)")
RUNTIME_READY = re.compile(r"tensorgate-runtime ready")
STARTED = re.compile(r"(runtime-\d+) started \(pid (\d+)\)")
RESTARTED = re.compile(r"(runtime-\d+) restarted \(pid (\d+)\)")
READMITTED = re.compile(r"runtime worker \S+lane-(\d+)\.sock re-admitted")


class Process:
    """A child process whose output lines are kept, each with the time it arrived."""

    def __init__(self, argv: list[str], stdin: bool = False) -> None:
        """With `stdin`, the child reads a pipe that `popen.stdin` writes (and closes)."""
        self.popen = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True,
                                      stdin=subprocess.PIPE if stdin else None)
        self.lines: list[tuple[float, str]] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append((time.monotonic(), line))
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, pattern: re.Pattern, timeout: float = 120.0) -> re.Match:
        ends = time.monotonic() + timeout
        while True:
            line = self._new.get(timeout=max(0.01, ends - time.monotonic()))
            if line is None:
                raise RuntimeError(f"exited before {pattern.pattern!r}:\n{self.output()}")
            if match := pattern.search(line):
                return match

    def matches(self, pattern: re.Pattern) -> list[tuple[float, re.Match]]:
        return [(t, m) for t, line in list(self.lines) if (m := pattern.search(line))]

    def pid_of(self, child: str) -> int:
        return max((t, int(m.group(2))) for t, m in self.matches(STARTED)
                   if m.group(1) == child)[1]

    def output(self) -> str:
        return "".join(line for _, line in list(self.lines))

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, and the exit code; killed (and -9) if it takes longer than `timeout`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


def tensorgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "tensorgate", *args]


def serve(workers: int, tmp: Path, *extra: str) -> tuple[Process, int]:
    """`tensorgate serve` with `workers` runtime workers and one gateway; its gRPC port."""
    process = Process(tensorgate(
        "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
        "--metrics-port", "-1", "--threads", "2", "--runtime-workers", str(workers),
        "--gateway-processes", "1", "--no-auth", "--registry", str(tmp / "registry.db"), *extra))
    return process, int(process.wait_for(SERVE_READY).group(2))


def digits_request(rows: int = 1) -> bytes:
    request = pb.ModelInferRequest(model_name="digits", model_version="1")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[rows, 64])
    request.raw_input_contents.append(np.random.default_rng(0).random((rows, 64), "<f4")
                                      .tobytes())
    return request.SerializeToString()


def sleepy_request() -> bytes:
    request = pb.ModelInferRequest(model_name="sleepy")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[4])
    request.raw_input_contents.append(np.arange(4, dtype="<f4").tobytes())
    return request.SerializeToString()


@dataclass
class Tally:
    """Every answer: latencies of the good ones, failures as (time, code, message)."""

    answer_bytes: int
    latencies: list[float] = field(default_factory=list)
    #: When each good answer's request was sent (time.monotonic).
    sent: list[float] = field(default_factory=list)
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    #: When each failure came back (time.monotonic), in the order of `failures`.
    failed_at: list[float] = field(default_factory=list)

    def record(self, started: float, answer: bytes) -> None:
        outputs = pb.ModelInferResponse.FromString(answer).raw_output_contents
        if len(outputs) != 1 or len(outputs[0]) != self.answer_bytes:
            self.failures.append((started, "WRONG_ANSWER", f"{len(outputs)} outputs"))
        else:
            self.latencies.append(time.monotonic() - started)
            self.sent.append(started)

    def codes(self) -> Counter[str]:
        return Counter(code for _, code, _ in self.failures)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else 0.0


async def call_once(call: grpc.aio.UnaryUnaryMultiCallable, request: bytes, tally: Tally,
                    timeout: float) -> None:
    started = time.monotonic()
    try:
        answer = await call(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        tally.failures.append((started, exc.code().name, exc.details() or ""))
        tally.failed_at.append(time.monotonic())
    else:
        tally.record(started, answer)


async def closed_loop(port: int, callers: int, seconds: float, request: bytes, tally: Tally,
                      timeout: float = 10.0, stop: asyncio.Event | None = None) -> float:
    """`callers` callers, each sending as soon as answered, for `seconds` or until `stop` is
    set; returns answers/s."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        began = time.monotonic()
        ends = began + seconds
        before = len(tally.latencies) + len(tally.failures)

        async def caller() -> None:
            while time.monotonic() < ends and not (stop is not None and stop.is_set()):
                await call_once(call, request, tally, timeout)

        await asyncio.gather(*(caller() for _ in range(callers)))
        took = min(seconds, time.monotonic() - began) or seconds
        return (len(tally.latencies) + len(tally.failures) - before) / took


async def open_loop(port: int, rate: float, seconds: float, request: bytes, tally: Tally,
                    timeout: float = 10.0) -> None:
    """Requests sent at `rate` per second whatever happens to them (an open loop)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        started = time.monotonic()
        calls = []
        for i in range(int(rate * seconds)):
            # NOTE: pacing the load generator, not the server: a sleep is what an open loop is.
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            calls.append(asyncio.ensure_future(call_once(call, request, tally, timeout)))
        await asyncio.gather(*calls)


@dataclass
class KillRun:
    workers: int
    callers: int
    kills: list[float]
    tally: Tally
    #: Seconds from each kill to the victim's "restarted" line, and to the gateway's
    #: "re-admitted" line for it.
    restarts: list[float]
    readmitted: list[float]
    exit_code: int
    #: How long the load ran, in seconds.
    seconds: float = 0.0


def first_after(process: Process, pattern: re.Pattern, worker: int, since: float) -> float:
    """Seconds from `since` to the first line of `pattern` about runtime worker `worker`."""
    times = [t - since for t, m in process.matches(pattern)
             if t > since and m.group(1).endswith(str(worker))]
    return min(times) if times else float("inf")


async def wait_until(check: Callable[[], bool], what: str, ceiling: float,
                     process: Process | None = None) -> None:
    """Wait for a state, not a time: `ceiling` only bounds a wait that would never end."""
    ends = time.monotonic() + ceiling
    while not check():
        if time.monotonic() > ends:
            tail = process.output()[-4000:] if process is not None else ""
            raise TimeoutError(f"{what}: not seen within {ceiling:.0f}s\n{tail}")
        await asyncio.sleep(0.05)  # NOTE: the load generator waiting, not the server


async def kill_run(workers: int, callers: int, kills: int, tmp: Path, after: int = 50,
                   every: float = 0.0, ceiling: float = 120.0) -> KillRun:
    """`serve` under closed-loop load; `kills` times SIGKILL the next worker once `after`
    answers (and `every` seconds) have come since the last event, then wait for the gateway
    to re-admit it; the load stops `after` answers (and `every` s) past the last re-admission.
    Events, not a timetable: a restart takes seconds on a busy machine."""
    process, port = serve(workers, tmp)
    tally = Tally(answer_bytes=40)
    stop = asyncio.Event()
    times: list[float] = []
    load = asyncio.ensure_future(closed_loop(port, callers, 10 * ceiling, digits_request(),
                                             tally, stop=stop))
    began = since = time.monotonic()
    try:
        for n in range(kills):
            await _answers_since(tally, since, after, every, process, ceiling)
            victim = n % workers
            os.kill(process.pid_of(f"runtime-{victim}"), signal.SIGKILL)
            killed = time.monotonic()
            times.append(killed)
            since = killed + await _readmitted(process, victim, killed, ceiling)
        await _answers_since(tally, since, after, every, process, ceiling)
    finally:
        stop.set()
        await load
        seconds = time.monotonic() - began
        code = process.stop()
    victims = [n % workers for n in range(len(times))]
    return KillRun(workers, callers, times, tally,
                   [first_after(process, RESTARTED, v, k) for v, k in zip(victims, times)],
                   [first_after(process, READMITTED, v, k) for v, k in zip(victims, times)],
                   code, seconds)


async def _readmitted(process: Process, victim: int, killed: float, ceiling: float) -> float:
    """Seconds from the kill to the gateway's re-admission of `victim`, once it comes."""
    def back() -> float:
        return first_after(process, READMITTED, victim, killed)

    await wait_until(lambda: back() < float("inf"), f"runtime-{victim} re-admitted", ceiling,
                     process)
    return back()


async def _answers_since(tally: Tally, since: float, count: int, seconds: float,
                         process: Process, ceiling: float) -> None:
    """Until `count` good answers to requests sent after `since`, and `seconds` after it."""
    def enough() -> bool:
        recent = sum(sent > since for sent in tally.sent[-count:])
        return recent >= count and time.monotonic() >= since + seconds

    await wait_until(enough, f"{count} answers", ceiling + seconds, process)


@dataclass
class OverloadRun:
    max_rate: float
    offered: float
    base: Tally
    over: Tally
    after_rate: float
    rss_mib: tuple[float, float]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


async def overload_run(tmp: Path, seconds: float = 3.0, callers: int = 8, max_in_flight: int = 16,
                       delay: float = 0.01, instances: int = 2) -> OverloadRun:
    """A gateway in front of `sleepy` (`instances` x 1/`delay` answers/s): its closed-loop
    maximum, then an open loop at 3x that, then the closed loop again."""
    lane = f"unix:{tmp}/sleepy-lane.sock"
    runtime = Process([sys.executable, "-m", "loadtest.sleepy", "--lane", lane, "--listen",
                       f"unix:{tmp}/sleepy-grpc.sock", "--delay", str(delay), "--instances",
                       str(instances)])
    gateway = None
    try:
        runtime.wait_for(RUNTIME_READY)
        gateway = Process(tensorgate(
            "gateway", "--runtime", lane, "--host", "127.0.0.1", "--http-port", "0",
            "--grpc-port", "0", "--metrics-port", "-1", "--no-auth", "--registry",
            str(tmp / "registry.db"), "--max-in-flight", str(max_in_flight)))
        port = int(gateway.wait_for(GATEWAY_READY).group(2))
        request = sleepy_request()
        base, over, after = Tally(16), Tally(16), Tally(16)
        max_rate = await closed_loop(port, callers, seconds, request, base)
        before = rss_mib(gateway.popen.pid)
        await open_loop(port, 3 * max_rate, seconds, request, over)
        grown = rss_mib(gateway.popen.pid)
        after_rate = await closed_loop(port, callers, seconds, request, after)
        return OverloadRun(max_rate, 3 * max_rate, base, over, after_rate, (before, grown))
    finally:
        if gateway is not None:
            gateway.stop()
        runtime.stop()


def print_kills(run: KillRun, title: str) -> None:
    t = run.tally
    codes = ", ".join(f"{c} {n}" for c, n in sorted(t.codes().items())) or "none"
    print(f"\n### {title}\n")
    print("| workers | callers | seconds | kills | answered | failed | by code | p50 ms | p99 ms "
          "| restarted / re-admitted after kill, s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |")
    restarts = ", ".join(f"{r:.1f} / {a:.1f}" for r, a in zip(run.restarts, run.readmitted))
    print(f"| {run.workers} | {run.callers} | {run.seconds:.0f} | {len(run.kills)} "
          f"| {len(t.latencies)} | {len(t.failures)} | {codes} | {t.percentile_ms(50):.1f} "
          f"| {t.percentile_ms(99):.1f} | {restarts} |")
    if t.failures and run.kills:
        first = min(f[0] for f in t.failures) - run.kills[0]
        last = max(f[0] for f in t.failures) - run.kills[0]
        print(f"\nfailures sent from {first:.2f}s to {last:.2f}s after the kill; messages: "
              f"{sorted({m for _, _, m in t.failures})[:3]}")


def print_overload(run: OverloadRun) -> None:
    shed = run.over.codes().get("RESOURCE_EXHAUSTED", 0)
    other = len(run.over.failures) - shed
    print("\n### Overload (sleepy model behind one gateway, --max-in-flight 16)\n")
    print("| phase | offered req/s | answered | shed (429) | other failures | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    b, o = run.base, run.over
    print(f"| closed loop (max rate) | - | {len(b.latencies)} | {b.codes()['RESOURCE_EXHAUSTED']} "
          f"| {len(b.failures) - b.codes()['RESOURCE_EXHAUSTED']} | {b.percentile_ms(50):.1f} "
          f"| {b.percentile_ms(99):.1f} |")
    print(f"| open loop at 3x | {run.offered:.0f} | {len(o.latencies)} | {shed} | {other} "
          f"| {o.percentile_ms(50):.1f} | {o.percentile_ms(99):.1f} |")
    ratio = o.percentile_ms(99) / max(b.percentile_ms(99), 1e-9)
    print(f"\nmax rate {run.max_rate:.0f} req/s; after the overload {run.after_rate:.0f} req/s "
          f"({run.after_rate / max(run.max_rate, 1e-9):.0%}); accepted p99 under overload "
          f"{ratio:.1f}x the max-rate p99; gateway RSS {run.rss_mib[0]:.1f} -> "
          f"{run.rss_mib[1]:.1f} MiB")


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="tensorgate-faults-") as name:
        tmp = Path(name)
        every = args.kill_every
        kills = max(1, int(args.seconds // every) - 1)
        two = await kill_run(2, args.callers, kills, tmp, every=every)
        print_kills(two, f"Two runtime workers, one SIGKILLed every {every:.0f} s or more "
                    "(each once the previous victim is back)")
        one = await kill_run(1, args.callers, 1, tmp, every=args.seconds / 4)
        print_kills(one, "One runtime worker, SIGKILLed once")
        overload = await overload_run(tmp)
        print_overload(overload)
    failed = two.tally.failures or any(c != "UNAVAILABLE" for _, c, _ in one.tally.failures)
    return 1 if failed or overload.over.codes().keys() - {"RESOURCE_EXHAUSTED"} else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--kill-every", type=float, default=10.0)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
