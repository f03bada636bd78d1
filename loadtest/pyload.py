"""The Python closed-loop load generators, used where h2load or wrk is not installed:

    python -m loadtest.pyload grpc|http --address HOST:PORT --path PATH --body FILE ...

``grpc``: ``grpc.aio`` on uvloop, a generic ``unary_unary`` with bytes in and out, the callers
spread over ``--connections`` channels (each its own connection). ``http``: HTTP/1.1 keep-alive on
raw asyncio transports with httptools' parser, one connection per caller. Each caller sends its
next request as soon as the previous one is answered. Prints ``window open``/``window closed``
as the measured window opens and closes, then one JSON line: answers inside the window, latency
percentiles, errors and this process's CPU seconds over the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httptools
import numpy as np
import uvloop

from loadtest.loadgen import CALL_TIMEOUT_S, WINDOW_CLOSED, WINDOW_OPEN, percentiles_ms

Call = Callable[[], Awaitable[None]]


@dataclass
class Tally:
    """What the callers of one run share: in-window latencies, and errors by kind."""

    window: tuple[int, int]
    latencies: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str = ""

    def error(self, kind: str, text: str) -> None:
        self.errors[kind] += 1
        self.first_error = self.first_error or text


async def caller(call: Call, tally: Tally) -> None:
    start, end = tally.window
    clock = time.perf_counter_ns
    while (t0 := clock()) < end:
        try:
            await call()
        except grpc.aio.AioRpcError as exc:
            tally.error(exc.code().name, f"{exc.code().name}: {exc.details()}")
            continue
        except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
            tally.error(type(exc).__name__, repr(exc))
            await asyncio.sleep(0.01)
            continue
        t1 = clock()
        if start <= t1 <= end:
            tally.latencies.append(t1 - t0)


def metadata_of(headers: list[str]) -> tuple[tuple[str, str], ...]:
    """'Name: value' headers as gRPC metadata (names lower case, as gRPC requires them)."""
    pairs = [header.partition(":") for header in headers]
    return tuple((name.strip().lower(), value.strip()) for name, _, value in pairs)


async def grpc_calls(args: argparse.Namespace, body: bytes) -> tuple[list[Call], Callable]:
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [grpc.aio.insecure_channel(args.address, options=options)
                for _ in range(args.connections)]
    await asyncio.gather(*(ch.channel_ready() for ch in channels))
    methods = [ch.unary_unary(args.path) for ch in channels]  # no serializers: raw bytes
    metadata = metadata_of(args.header)

    def make(method: grpc.aio.UnaryUnaryMultiCallable) -> Call:
        async def call() -> None:
            await method(body, timeout=CALL_TIMEOUT_S, metadata=metadata)
        return call

    async def close() -> None:
        await asyncio.gather(*(ch.close() for ch in channels))

    return [make(methods[i % len(methods)]) for i in range(args.concurrency)], close


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[int] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(exc)

    def on_message_complete(self) -> None:
        self._finish(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or ConnectionResetError("the server closed the connection"))

    def _finish(self, result: int | BaseException) -> None:
        if self.answer is not None and not self.answer.done():
            if isinstance(result, BaseException):
                self.answer.set_exception(result)
            else:
                self.answer.set_result(result)

    async def request(self, raw: bytes) -> int:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await asyncio.wait_for(self.answer, CALL_TIMEOUT_S)


async def http_calls(args: argparse.Namespace, body: bytes) -> tuple[list[Call], Callable]:
    host, _, port = args.address.rpartition(":")
    head = [f"POST {args.path} HTTP/1.1", f"Host: {args.address}",
            f"Content-Length: {len(body)}", *args.header]
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    connections: list[HttpConnection] = []
    for _ in range(args.concurrency):
        _, protocol = await loop.create_connection(HttpConnection, host, int(port))
        connections.append(protocol)

    def make(conn: HttpConnection) -> Call:
        async def call() -> None:
            status = await conn.request(raw)
            if not 200 <= status < 300:
                raise RuntimeError(f"HTTP status {status}")
        return call

    async def close() -> None:
        for conn in connections:
            if conn.transport is not None:
                conn.transport.close()

    return [make(conn) for conn in connections], close


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.body, "rb") as f:
        body = f.read()
    make = grpc_calls if args.protocol == "grpc" else http_calls
    calls, close = await make(args, body)
    try:
        start = time.perf_counter_ns() + int(args.warmup * 1e9)
        tally = Tally((start, start + int(args.duration * 1e9)))
        runners = asyncio.gather(*(caller(call, tally) for call in calls))
        await asyncio.sleep(max(0.0, (start - time.perf_counter_ns()) / 1e9))
        print(WINDOW_OPEN, flush=True)
        cpu = time.process_time()
        await asyncio.sleep(args.duration)
        cpu = time.process_time() - cpu
        print(WINDOW_CLOSED, flush=True)
        await runners
    finally:
        await close()
    latencies = np.asarray(tally.latencies, dtype=np.int64)
    return {"answered": len(latencies), "window_s": args.duration,
            "percentiles_ms": percentiles_ms(latencies), "errors": sum(tally.errors.values()),
            "first_error": tally.first_error, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol", choices=["grpc", "http"])
    parser.add_argument("--address", required=True, help="HOST:PORT")
    parser.add_argument("--path", required=True, help="gRPC method or HTTP path")
    parser.add_argument("--body", required=True, help="file: serialized message or HTTP body")
    parser.add_argument("--header", action="append", default=[],
                        help="'Name: value': an HTTP header, or gRPC metadata")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--connections", type=int, default=1, help="gRPC channels")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    result = uvloop.run(drive(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
