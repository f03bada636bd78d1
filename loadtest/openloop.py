"""Open-loop load: requests sent at a fixed rate whatever the answers do, each request's latency
measured from the time it was *scheduled* to be sent, so a stalled server or client shows up in
the latency instead of silently lowering the load (no coordinated omission).

``processes`` child processes each send ``rate / processes`` requests per second on an evenly
spaced schedule (their schedules interleaved), each over its own connection. The client is
``h2`` (loadtest/h2wire.py: raw HTTP/2 frames, a few tens of µs of CPU per call) or ``grpcio``
(``grpc.aio`` with raw bytes: several hundred µs per call, which on 2 shared cores makes the
client itself the bottleneck near the server's maximum rate). Only requests scheduled inside the
measured window count; any not answered within the drain time after the last send are errors.

h2load 1.52 has ``--rps`` but is no substitute: it sends in bursts (its pacing timer fires at
most every 10 ms) and times each request from when it was actually sent.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import grpc
import numpy as np
import uvloop

from loadtest.cases import METHOD
from loadtest.h2wire import connect
from loadtest.loadgen import CALL_TIMEOUT_S, Meter, percentiles_ms

DRAIN_S = 5.0
CLIENTS = ("h2", "grpcio")


@dataclass(frozen=True)
class Schedule:
    address: str
    body: bytes
    answer_size: int  # wire size of a good answer's gRPC message (the h2 client's check)
    rate: float  # requests per second, all processes together
    processes: int
    warmup_s: float
    duration_s: float
    client: str = "h2"


@dataclass
class OpenOutcome:
    """One open-loop run: what was asked and done, latency from the scheduled send time."""

    client: str
    rate: float
    answered: int
    window_s: float
    percentiles_ms: dict[str, float]
    errors: int
    first_error: str
    #: How late the client sent its requests, p99 and max (ms): large means it could not keep up.
    send_lag_ms: tuple[float, float]
    client_cpu_s: float
    server_cpu_s: dict[str, float] = field(default_factory=dict)
    #: Requests answered over the whole run (warm-up included), for CPU per request.
    total_answered: int = 0

    @property
    def achieved(self) -> float:
        return self.answered / self.window_s if self.window_s else 0.0


@dataclass
class _Part:
    latencies: np.ndarray
    lags: np.ndarray
    errors: Counter[str]
    first_error: str
    total_answered: int
    cpu_s: float


class _Sender:
    """One process's share of the schedule: every ``interval`` ns from ``first_due``."""

    def __init__(self, spec: Schedule, index: int, start_ns: int) -> None:
        self.spec = spec
        self.interval = int(1e9 * spec.processes / spec.rate)
        self.first_due = start_ns + self.interval * index // spec.processes
        self.count = int((spec.warmup_s + spec.duration_s) * spec.rate / spec.processes)
        self.window_start = start_ns + int(spec.warmup_s * 1e9)
        self.latencies: list[int] = []
        self.lags: list[int] = []
        self.errors: Counter[str] = Counter()
        self.first_error = ""
        self.answered = 0
        self.finished = 0

    def record(self, ok: bool, due: int, error: str) -> None:
        """One request finished: its latency from ``due`` if good, else one error."""
        self.finished += 1
        if not ok:
            self.errors[error.partition(":")[0]] += 1
            self.first_error = self.first_error or error
            return
        self.answered += 1
        if due >= self.window_start:
            self.latencies.append(time.perf_counter_ns() - due)

    async def _grpcio(self, call: grpc.aio.UnaryUnaryMultiCallable, due: int) -> None:
        try:
            await call(self.spec.body, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            self.record(False, due, f"{exc.code().name}: {exc.details()}")
            return
        self.record(True, due, "")

    async def _open(self) -> tuple[Callable[[int], None], Callable[[], Awaitable[None]]]:
        """The client's ``send(due)`` and ``close()``."""
        spec = self.spec
        if spec.client == "h2":
            conn = await connect(spec.address, METHOD, spec.body, spec.answer_size, self.record)

            async def close_h2() -> None:
                conn.close()

            return conn.send, close_h2
        channel = grpc.aio.insecure_channel(spec.address)
        await channel.channel_ready()
        call = channel.unary_unary(METHOD)  # no serializers: raw bytes
        tasks: set[asyncio.Future[None]] = set()

        def send(due: int) -> None:
            tasks.add(task := asyncio.ensure_future(self._grpcio(call, due)))
            task.add_done_callback(tasks.discard)

        async def close() -> None:
            await channel.close(grace=None)

        return send, close

    async def run(self) -> _Part:
        send, close = await self._open()
        try:
            cpu = time.process_time()
            await self._pace(send)
            deadline = time.monotonic() + DRAIN_S
            while self.finished < self.count and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            cpu = time.process_time() - cpu
        finally:
            await close()
        if self.finished < self.count:
            self.record(False, 0, f"UNANSWERED: {self.count - self.finished} requests "
                                  f"{DRAIN_S:.0f}s after the last send")
        return _Part(np.asarray(self.latencies, np.int64), np.asarray(self.lags, np.int64),
                     self.errors, self.first_error, self.answered, cpu)

    async def _pace(self, send: Callable[[int], None]) -> None:
        """Send each request at its due time; when late, send every overdue one at once."""
        clock = time.perf_counter_ns
        await asyncio.sleep(max(0.0, (self.first_due - clock()) / 1e9))
        for i in range(self.count):
            due = self.first_due + i * self.interval
            now = clock()
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                now = clock()
            if due >= self.window_start:
                self.lags.append(now - due)
            send(due)


def _child(spec: Schedule, index: int, start_ns: int, conn: Connection) -> None:
    try:
        conn.send(uvloop.run(_Sender(spec, index, start_ns).run()))
    except BaseException as exc:
        conn.send(RuntimeError(f"open-loop sender {index} failed: {exc!r}"))
        raise
    finally:
        conn.close()


def _reap(proc: mp.process.BaseProcess) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
    proc.join(5)


def open_loop(spec: Schedule, meter: Meter) -> OpenOutcome:
    """Run the senders (fresh processes, always reaped) and merge what they measured."""
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    start_ns = time.perf_counter_ns() + int(3e9)  # CLOCK_MONOTONIC: the same in every process
    before = meter()
    try:
        for index in range(spec.processes):
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(spec, index, start_ns, child),
                               name=f"openloop-{index}", daemon=True)
            proc.start()
            child.close()
            pipes.append(parent)
            procs.append(proc)
        limit = 3 + spec.warmup_s + spec.duration_s + DRAIN_S + 30.0
        parts = []
        for parent in pipes:
            if not parent.poll(limit):
                raise TimeoutError(f"open-loop sender gave no result within {limit:.0f}s")
            part = parent.recv()
            if isinstance(part, BaseException):
                raise part
            parts.append(part)
        after = meter()
    finally:
        for parent in pipes:
            parent.close()
        for proc in procs:
            _reap(proc)
    return _merge(spec, parts, {k: after[k] - before[k] for k in after if k in before})


def _merge(spec: Schedule, parts: list[_Part], server_cpu: dict[str, float]) -> OpenOutcome:
    latencies = np.concatenate([p.latencies for p in parts])
    lags = np.concatenate([p.lags for p in parts]) / 1e6
    errors = sum((p.errors for p in parts), Counter())
    lag = (float(np.percentile(lags, 99)), float(lags.max())) if len(lags) else (0.0, 0.0)
    first = next((p.first_error for p in parts if p.first_error), "")
    return OpenOutcome(spec.client, spec.rate, len(latencies), spec.duration_s,
                       percentiles_ms(latencies), sum(errors.values()), first, lag,
                       sum(p.cpu_s for p in parts), server_cpu,
                       sum(p.total_answered for p in parts))
