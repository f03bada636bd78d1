"""The closed-loop gRPC load generator (a child process, raw bytes through grpc.aio) and the
do-nothing floor server: ``python -m loadtest.loadgen floor --listen HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import grpc
import numpy as np
import uvloop

from common.proto import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
METHOD = f"/{SERVICE}/ModelInfer"
CALL_TIMEOUT_S = 30.0
FLOOR_READY = "floor serving gRPC on"


def infer_request(model: str, version: str, row: np.ndarray) -> bytes:
    """A serialized one-row ModelInferRequest with its tensor in raw_input_contents."""
    row = np.ascontiguousarray(row, dtype=np.float32).reshape(1, -1)
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=list(row.shape))
    request.raw_input_contents.append(row.tobytes())
    return request.SerializeToString()


@dataclass
class LoadSpec:
    """What one measurement sends, where, how hard and for how long."""

    target: str
    payload: bytes
    concurrency: int
    warmup_s: float
    duration_s: float
    channels: int = 1


@dataclass
class LoadResult:
    """Latencies (ns) of the calls that completed inside the measured window, and all errors."""

    latencies_ns: np.ndarray
    window_s: float
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str = ""
    #: Calls answered during warm-up and measurement, and the client's CPU seconds meanwhile.
    calls: int = 0
    cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies_ns) / self.window_s

    def percentile_ms(self, q: float) -> float:
        if not len(self.latencies_ns):
            return float("nan")
        return float(np.percentile(self.latencies_ns, q)) / 1e6

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class _Tally:
    """What the workers of one run share: in-window latencies, answered calls and errors."""

    latencies: list[int] = field(default_factory=list)
    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str = ""


async def _worker(call: grpc.aio.UnaryUnaryMultiCallable, payload: bytes,
                  window: tuple[int, int], tally: _Tally) -> None:
    start, end = window
    clock = time.perf_counter_ns
    latencies = tally.latencies
    while (t0 := clock()) < end:
        try:
            await call(payload, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            tally.errors[exc.code().name] += 1
            tally.first_error = tally.first_error or f"{exc.code().name}: {exc.details()}"
            continue
        t1 = clock()
        tally.calls += 1
        if start <= t1 <= end:
            latencies.append(t1 - t0)


async def _drive(spec: LoadSpec) -> LoadResult:
    channels = [grpc.aio.insecure_channel(spec.target) for _ in range(spec.channels)]
    try:
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        calls = [ch.unary_unary(METHOD) for ch in channels]  # no serializers: bytes in and out
        cpu = time.process_time()
        start = time.perf_counter_ns() + int(spec.warmup_s * 1e9)
        window = (start, start + int(spec.duration_s * 1e9))
        tally = _Tally()
        await asyncio.gather(*(_worker(calls[i % len(calls)], spec.payload, window, tally)
                               for i in range(spec.concurrency)))
        cpu = time.process_time() - cpu
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    return LoadResult(np.asarray(tally.latencies, dtype=np.int64), spec.duration_s,
                      tally.errors, tally.first_error, tally.calls, cpu)


def _child(spec: LoadSpec, conn: Connection) -> None:
    try:
        conn.send(uvloop.run(_drive(spec)))
    except BaseException as exc:
        conn.send(RuntimeError(f"load generator failed: {exc!r}"))
        raise
    finally:
        conn.close()


def run_load(spec: LoadSpec) -> LoadResult:
    """Run one closed-loop measurement in a fresh process; always reaps it."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(spec, child), name="loadgen", daemon=True)
    proc.start()
    child.close()
    try:
        limit = spec.warmup_s + spec.duration_s + CALL_TIMEOUT_S + 60.0
        if not parent.poll(limit):
            raise TimeoutError(f"load generator gave no result within {limit:.0f}s")
        result = parent.recv()
        if isinstance(result, BaseException):
            raise result
        proc.join(10)
        return result
    finally:
        parent.close()
        _reap(proc)


def _reap(proc: mp.process.BaseProcess) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


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
        _reap(proc)


def floor_response() -> bytes:
    """The fixed answer of the floor server: a digits-shaped ModelInferResponse (10 FP32)."""
    response = pb.ModelInferResponse(model_name="digits", model_version="1", id="")
    response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(np.full(10, 0.1, dtype=np.float32).tobytes())
    return response.SerializeToString()


async def serve_floor(listen: str) -> None:
    """A grpc.aio server whose ModelInfer answers a fixed response and does nothing else."""
    answer = floor_response()

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}),))
    port = server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"{FLOOR_READY} {listen.rpartition(':')[0]}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description="the do-nothing gRPC floor server")
    parser.add_argument("role", choices=["floor"])
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    uvloop.run(serve_floor(args.listen))


if __name__ == "__main__":
    main()
