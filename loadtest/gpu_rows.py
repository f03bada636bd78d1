"""gpu_bench's served rows: each path's load run (h2load, wrk, or perf_analyzer for the
shared-memory paths) and its check, and what one run is measured with: the runtimes' batching,
the busiest threads and processes, and the GPU's utilisation."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from loadtest import shm_rows
from loadtest.build_resnet import CLASSES
from loadtest.cases import METHOD, Case, check_grpc, check_http
from loadtest.floor_rows import FLOOR_PATHS, binary_headers, loads
from loadtest.gpu_report import Row
from loadtest.gpu_util import Utilisation
from loadtest.loadgen import Outcome, Target, closed_loop
from loadtest.report import GW_BINARY, GW_GRPC, RUNTIME
from loadtest.servers import Children, Probe, batching
from loadtest.shm_rows import SHM_PATHS
from loadtest.triton_perf import PerfFailed

#: The paths, as --paths names them, in the order they run within a layout: the first runtime
#: called directly, the gateway over gRPC and HTTP binary (h2load, wrk), then with the tensors
#: in system or CUDA shared memory (perf_analyzer); the floors run once, before the layouts.
PATHS = ("runtime", "grpc", "http", *SHM_PATHS, *FLOOR_PATHS)


def thread_busy(before: dict[int, float], after: dict[int, float], main: int,
                seconds: float) -> tuple[float, float]:
    """Cores kept busy by a process's main thread and by its busiest other thread."""
    busy = {tid: (after[tid] - before.get(tid, 0.0)) / seconds for tid in after}
    return busy.pop(main, 0.0), max(busy.values(), default=0.0)


def busiest(before: dict[int, float], after: dict[int, float], seconds: float) -> float:
    """Cores kept busy by the busiest of a group's processes (the gateways share callers'
    connections by the kernel's SO_REUSEPORT hash, not evenly)."""
    return max(((after[pid] - before.get(pid, 0.0)) / seconds for pid in after), default=0.0)


Run = tuple[str, Callable[[], Outcome], Callable[[], object]]


def load_runs(case: Case, opts: argparse.Namespace, children: Children, runtimes: list[str],
              gateway: tuple[str, str]) -> dict[str, Run]:
    """Each served path by its --paths name: its row's name, its load run and its check."""
    gateway_grpc, gateway_http = gateway
    first = runtimes[0]
    both = loads(opts)
    load, http_load = both["grpc"], both["http"]

    def h2load(address: str) -> Callable[[], Outcome]:
        return lambda: closed_loop(Target("grpc", address, METHOD, case.grpc_body,
                                          answer_size=check_grpc(address, case)),
                                   load, children.cpu_seconds)

    def perf(key: str) -> Callable[[], Outcome]:
        address = gateway_grpc if SHM_PATHS[key][1] == "grpc" else gateway_http
        output_bytes = opts.rows * CLASSES * case.output_dtype.itemsize
        return lambda: shm_rows.measure(key, address, case.name, opts.concurrency, opts.rows,
                                        output_bytes, opts.duration, opts.warmup > 0,
                                        children.cpu_seconds)

    runs: dict[str, Run] = {
        "runtime": (RUNTIME if len(runtimes) == 1 else f"{RUNTIME}, one of {len(runtimes)}",
                    h2load(first), lambda: check_grpc(first, case)),
        "grpc": (GW_GRPC, h2load(gateway_grpc), lambda: check_grpc(gateway_grpc, case)),
        "http": (GW_BINARY, lambda: closed_loop(
            Target("http", gateway_http, case.http_path, case.binary_body, binary_headers(case)),
            http_load, children.cpu_seconds),
            lambda: check_http(gateway_http, case, binary=True)),
    }
    for key in SHM_PATHS:
        runs[key] = (shm_rows.path_name(key), perf(key), lambda: check_grpc(gateway_grpc, case))
    return runs


def measured(row: Row, run: Callable[[], Outcome], opts: argparse.Namespace,
             children: Children, probes: list[Probe], cuda: bool) -> None:
    """Fill ``row`` from one load run: its outcome, the runtimes' batching, the cores the
    busiest threads and processes kept busy, and the GPU's utilisation. A perf_analyzer run
    that fails is a failure of the bench, except CUDA shared memory's (a perf_analyzer built
    without GPU support cannot run it): its row then says what perf_analyzer answered."""
    before = [probe() for probe in probes]
    threads, gateways = (children.thread_cpu_seconds("runtime0"),
                         children.process_cpu_seconds("gateway"))
    started = time.monotonic()
    try:
        with Utilisation(opts.device) as gpu:
            row.outcome = run()
    except PerfFailed as exc:
        row.note = f"{'not available' if cuda else 'failed'}: {exc}"
        if not cuda:
            children.problems.append(f"{row.path}: {exc}")
        return
    seconds = time.monotonic() - started
    row.busy = (*thread_busy(threads, children.thread_cpu_seconds("runtime0"),
                             children.procs["runtime0"].pid, seconds),
                busiest(gateways, children.process_cpu_seconds("gateway"), seconds))
    row.stats = batching(np.sum([p() - b for p, b in zip(probes, before)], axis=0))
    row.gpu = gpu.mean()


def summary(row: Row, rows_per_request: int) -> str:
    o = row.outcome
    if o is None:
        return f"{row.path}: {row.note}"
    gpu = f", GPU {row.gpu:.0f} %" if row.gpu is not None else ""
    return (f"{row.path}: {o.rate * rows_per_request:8.0f} rows/s, p50 {o.p('50'):.1f} ms, "
            f"p99 {o.p('99'):.1f} ms, errors {o.errors}{gpu}  [{o.generator}]")
