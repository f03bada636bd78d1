"""gpu_bench's floor rows: the do-nothing servers (loadtest/floors.py) fed the very requests the
served rows send, by the same generators, each of as many processes as the gateway: what a
Python server carries for requests of this size, the bound the gateway's rows are read
against."""

from __future__ import annotations

import argparse
import math

from loadtest.cases import HEADER_LENGTH, METHOD, Case
from loadtest.floors import grpc_answer
from loadtest.gpu_report import Row
from loadtest.loadgen import Load, Target, closed_loop
from loadtest.servers import Children, start_floor

#: --paths names of the floor rows: the protocol of each.
FLOOR_PATHS = {"floor-grpc": "grpc", "floor-http": "http"}
FLOOR_NAMES = {"grpc": "do-nothing grpc.aio server (gRPC)",
               "http": "do-nothing uvicorn app (HTTP binary)"}
#: The served row each floor bounds (gpu_rows' names).
BOUNDS = {"grpc": "gateway → runtime, gRPC", "http": "gateway → runtime, HTTP binary"}


def loads(opts: argparse.Namespace) -> dict[str, Load]:
    """The closed loops of the served and floor rows: gRPC callers share --connections HTTP/2
    connections; wrk gives each HTTP caller a connection."""
    grpc = Load(opts.concurrency, opts.connections, opts.warmup, opts.duration,
                threads=opts.generator_threads)
    http = Load(opts.concurrency, opts.concurrency, opts.warmup, opts.duration,
                threads=opts.generator_threads)
    return {"grpc": grpc, "http": http}


def binary_headers(case: Case) -> tuple[tuple[str, str], ...]:
    return ((HEADER_LENGTH, str(case.binary_header_length)),
            ("Content-Type", "application/octet-stream"))


def floor_rows(case: Case, opts: argparse.Namespace, children: Children) -> list[Row]:
    """Each floor --paths asks for, started, loaded like its served row, and stopped. The
    floor's own CPU stands in the gateway columns of its row."""
    rows = []
    for key, protocol in FLOOR_PATHS.items():
        if key not in opts.paths:
            continue
        address = start_floor(children, protocol, key, opts.gateway_processes)
        try:
            target = (Target("grpc", address, METHOD, case.grpc_body,
                             answer_size=len(grpc_answer()) + 5) if protocol == "grpc" else
                      Target("http", address, case.http_path, case.binary_body,
                             binary_headers(case)))
            row = Row("-", FLOOR_NAMES[protocol])
            row.outcome = closed_loop(target, loads(opts)[protocol], children.cpu_seconds)
            row.busy = (math.nan, math.nan, row.outcome.cores(key))
        finally:
            children.stop(key)
        print(f"  floor {row.path}: {row.outcome.rate * opts.rows:8.0f} rows/s, "
              f"errors {row.outcome.errors}", flush=True)
        rows.append(row)
    return rows


def against_floors(rows: list[Row], rows_per_request: int) -> list[str]:
    """One line per served row that has a floor in ``rows``: its rate ÷ the floor's."""
    floors = {row.path: row.outcome.rate for row in rows
              if row.layout == "-" and row.outcome is not None and row.outcome.rate}
    lines = []
    for row in rows:
        for protocol, served in BOUNDS.items():
            floor = floors.get(FLOOR_NAMES[protocol])
            if row.path == served and row.outcome is not None and floor:
                lines.append(f"- {row.layout} {row.path}: {row.outcome.rate / floor:.2f} of the "
                             f"{FLOOR_NAMES[protocol]} ({floor * rows_per_request:.0f} rows/s)")
    return lines
