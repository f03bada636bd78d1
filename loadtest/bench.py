"""End-to-end benchmark: in-process ceiling, runtime and gateway over gRPC, and a do-nothing floor.

Run ``python -m loadtest.bench`` (``make bench``); it rewrites ``loadtest/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

import grpc
import numpy as np

from common.model_config import load_model_config
from common.proto import grpc_service_pb2 as pb
from common.settings import default_threads
from loadtest.loadgen import (
    FLOOR_READY,
    METHOD,
    SERVICE,
    LoadSpec,
    infer_request,
    run_load,
    wakeup_rtt_us,
)
from runtime.backends.base import Backend

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "loadtest" / ".models"
LOGS = REPO / ".logs"  # a dot folder: the runtime's repository scan skips it
DEFAULT_OUT = ROOT / "loadtest" / "RESULTS.md"
BATCH_SIZES = (1, 8, 16, 32, 64)
MODELS = ("digits", "heavy")
RUNTIME_READY = "runtime serving gRPC on"
GATEWAY_READY = "gateway serving HTTP on"
RUNTIME = "runtime (gRPC)"
GATEWAY = "gateway → runtime (gRPC)"
FLOOR = "do-nothing grpc.aio server"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    ceiling_s: float
    models: tuple[str, ...]
    concurrency: int
    channels: int
    threads: int
    floor: bool
    out: Path | None
    argv: tuple[str, ...]


@dataclass
class Case:
    """One benchmarked model version: where it is, its one-row request and expected answer."""

    name: str
    version: str
    directory: Path
    payload: bytes = b""
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    expected: np.ndarray | None = None

    @property
    def artifact(self) -> Path:
        return self.directory / self.version / "model.onnx"

    @property
    def config_path(self) -> Path:
        return self.directory / "config.yaml"


@dataclass(frozen=True)
class BatchPoint:
    """The in-process backend at one batch size: rows/s and the latency of one call."""

    batch: int
    rows_per_s: float
    p50_ms: float
    p99_ms: float


@dataclass
class Row:
    """One load run: a path to a model under a closed loop of ``concurrency`` callers."""

    model: str
    path: str
    concurrency: str
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    first_error: str = ""
    #: CPU microseconds per answered call, by process ("client" and each server).
    cpu_us: dict[str, float] = field(default_factory=dict)
    #: The runtime's own statistics over the run: batches, rows per batch, queue and infer µs.
    batching: tuple[int, float, float, float] | None = None


@dataclass
class Results:
    machine: dict[str, str]
    command: str
    threads: int
    sweeps: dict[str, list[BatchPoint]] = field(default_factory=dict)
    queue_delay_us: dict[str, int] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    #: Anything wrong that did not stop the run, e.g. a server that did not exit cleanly.
    problems: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def find(self, model: str, path: str, concurrency: int) -> Row | None:
        for row in self.rows:
            if (row.model, row.path, row.concurrency) == (model, path, str(concurrency)):
                return row
        return None


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds measured per load run (10)")
    parser.add_argument("--warmup", type=float, default=1.5,
                        help="seconds of load before each measurement (1.5)")
    parser.add_argument("--models", default=",".join(MODELS), help="digits,heavy")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="closed-loop callers of the loaded runs (64); 1 is always run too")
    parser.add_argument("--channels", type=int, default=1, help="client gRPC channels (1)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="compute threads: the runtime's --threads and the ceiling's")
    parser.add_argument("--no-floor", action="store_true", help="skip the do-nothing server")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 s per measurement; writes only with --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results file ({DEFAULT_OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        parser.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    duration, warmup = (1.0, 0.5) if args.quick else (args.duration, args.warmup)
    out = args.out if args.out is not None or args.quick else DEFAULT_OUT
    return Options(duration, warmup, max(0.3, duration / len(BATCH_SIZES)), models,
                   args.concurrency, args.channels, args.threads, not args.no_floor, out,
                   tuple(argv))


def prepare_repo() -> dict[str, Case]:
    """``loadtest/.models``: the built ``heavy`` model and a link to ``models/digits``."""
    from loadtest.build_heavy_model import build

    REPO.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(exist_ok=True)
    digits = REPO / "digits"
    if not digits.exists():
        digits.symlink_to(ROOT / "models" / "digits", target_is_directory=True)
    cases = {"digits": Case("digits", "1", digits), "heavy": Case("heavy", "1", build(REPO))}
    rng = np.random.default_rng(7)
    for case in cases.values():
        config = load_model_config(case.config_path, case.name)
        width = config.inputs[0].shape[0] if config.inputs else 0
        case.row = rng.random(width, dtype=np.float32)
        case.payload = infer_request(case.name, case.version, case.row)
    return cases


def time_batch(backend: Backend, x: np.ndarray, seconds: float) -> BatchPoint:
    """Back-to-back calls of one batch size for ``seconds``: rows/s and per-call latency."""
    run = backend.run
    for _ in range(5):
        run([x])
    clock = time.perf_counter_ns
    latencies: list[int] = []
    start = clock()
    end = start + int(seconds * 1e9)
    while (t0 := clock()) < end:
        run([x])
        latencies.append(clock() - t0)
    elapsed = (clock() - start) / 1e9
    ns = np.asarray(latencies)
    return BatchPoint(len(x), len(x) * len(ns) / elapsed, float(np.percentile(ns, 50)) / 1e6,
                      float(np.percentile(ns, 99)) / 1e6)


def ceiling(case: Case, opts: Options) -> list[BatchPoint]:
    """The backend in this process, as the runtime builds it, at each batch size."""
    from runtime.backends.onnx import OnnxBackend

    config = load_model_config(case.config_path, case.name)
    backend = OnnxBackend(case.artifact, config, opts.threads)
    case.expected = backend.run([case.row.reshape(1, -1)])[0]
    rng = np.random.default_rng(11)
    sizes = [b for b in BATCH_SIZES if b <= max(1, config.max_batch_size)]
    points = []
    for size in sizes:
        x = rng.random((size, case.row.size), dtype=np.float32)
        points.append(time_batch(backend, x, opts.ceiling_s))
        print(f"  {case.name} in-process batch {size:>2}: {points[-1].rows_per_s:10.0f} rows/s, "
              f"p50 {points[-1].p50_ms:.3f} ms", flush=True)
    return points


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Children:
    """Server processes logging to files; ``close`` stops every one: SIGTERM, then SIGKILL."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], ready: str) -> None:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as sink:
            self.procs[name] = subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while ready not in log.read_text(errors="replace"):
            code = self.procs[name].poll()
            if code is not None or time.monotonic() > deadline:
                state = f"exited with code {code}" if code is not None else "is not ready"
                raise RuntimeError(f"{name} {state}; its log {log}:\n{tail(log)}")
            time.sleep(0.05)

    def stop(self, name: str) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                return proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"warning: {name} ignored SIGTERM for {STOP_TIMEOUT_S:.0f}s; killing it",
                      file=sys.stderr)
                proc.kill()
        return proc.wait()

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds each running child has used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        used = {}
        for name, proc in self.procs.items():
            try:
                stat = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            used[name] = (int(stat[11]) + int(stat[12])) / ticks  # utime, stime
        return used

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def check_answer(target: str, case: Case) -> None:
    """One call before the load: the answer must decode and match the in-process result."""
    with grpc.insecure_channel(target) as channel:
        answer = channel.unary_unary(METHOD)(case.payload, timeout=60)
    response = pb.ModelInferResponse.FromString(answer)
    if case.expected is None:
        return
    got = (np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
           if len(response.raw_output_contents) == 1 else np.zeros(0, np.float32))
    want = case.expected.reshape(-1)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{target}: wrong answer for {case.name}: {response}")


Probe = Callable[[], np.ndarray]


def runtime_probe(target: str, case: Case) -> Probe:
    """A reader of the runtime's statistics for one model version (Triton's extension)."""
    request = pb.ModelStatisticsRequest(name=case.name, version=case.version).SerializeToString()

    def read() -> np.ndarray:
        with grpc.insecure_channel(target) as channel:
            answer = channel.unary_unary(f"/{SERVICE}/ModelStatistics")(request, timeout=30)
        stats = pb.ModelStatisticsResponse.FromString(answer).model_stats[0]
        infer = stats.inference_stats
        return np.array([stats.execution_count, stats.inference_count, infer.queue.ns,
                         infer.queue.count, infer.compute_infer.ns, infer.compute_infer.count],
                        dtype=np.int64)

    return read


def batching(delta: np.ndarray) -> tuple[int, float, float, float] | None:
    """Batches run, mean rows per batch, mean queue µs per request, mean batch compute µs."""
    executions, rows, queue_ns, queued, infer_ns, inferred = (int(v) for v in delta)
    if not executions:
        return None
    return (executions, rows / executions, queue_ns / max(1, queued) / 1e3,
            infer_ns / max(1, inferred) / 1e3)


def measure(opts: Options, children: Children, model: str, path: str, target: str,
            payload: bytes, concurrency: int, probe: Probe | None = None) -> Row:
    spec = LoadSpec(target, payload, concurrency, opts.warmup, opts.duration, opts.channels)
    counts = probe() if probe else None
    before = children.cpu_seconds()
    result = run_load(spec)
    after = children.cpu_seconds()
    calls = max(1, result.calls)
    cpu = {"client": 1e6 * result.cpu_s / calls}
    cpu.update({name: 1e6 * (after[name] - before[name]) / calls
                for name in after if name in before})
    row = Row(model, path, str(concurrency), result.rate, result.percentile_ms(50),
              result.percentile_ms(99), result.error_count, result.first_error, cpu)
    if probe is not None and counts is not None:
        row.batching = batching(probe() - counts)
    print(f"  {model} {path} c{concurrency}: {row.rate:8.0f} req/s, p50 {row.p50_ms:.3f} ms, "
          f"p99 {row.p99_ms:.3f} ms, errors {row.errors}", flush=True)
    return row


def measure_floor(opts: Options, children: Children, payload: bytes) -> list[Row]:
    address = f"127.0.0.1:{free_port()}"
    children.start("floor", [sys.executable, "-m", "loadtest.loadgen", "floor",
                             "--listen", address], FLOOR_READY)
    try:
        return [measure(opts, children, "-", FLOOR, address, payload, concurrency)
                for concurrency in (opts.concurrency, 1)]
    finally:
        children.stop("floor")


def start_servers(opts: Options, children: Children) -> tuple[str, str]:
    """A runtime worker over the bench repository and a gateway in front of it."""
    runtime = f"127.0.0.1:{free_port()}"
    lane = f"127.0.0.1:{free_port()}"
    children.start("runtime", [sys.executable, "-m", "tensorgate", "runtime",
                               "--model-repository", str(REPO), "--listen", runtime,
                               "--lane", lane, "--threads", str(opts.threads)], RUNTIME_READY)
    grpc_port = free_port()
    children.start("gateway", [sys.executable, "-m", "tensorgate", "gateway", "--runtime",
                               lane, "--host", "127.0.0.1", "--http-port", str(free_port()),
                               "--grpc-port", str(grpc_port), "--metrics-port", "-1"],
                   GATEWAY_READY)
    return runtime, f"127.0.0.1:{grpc_port}"


def measure_served(opts: Options, cases: list[Case], children: Children,
                   results: Results) -> None:
    """Each model through the runtime directly, then through the gateway; then stop both."""
    runtime, gateway = start_servers(opts, children)
    for path, target in ((RUNTIME, runtime), (GATEWAY, gateway)):
        for case in cases:
            check_answer(target, case)
            probe = runtime_probe(runtime, case)
            for concurrency in (opts.concurrency, 1):
                results.rows.append(measure(opts, children, case.name, path, target,
                                            case.payload, concurrency, probe))
    for name in ("gateway", "runtime"):
        code = children.stop(name)
        if code != 0:
            results.problems.append(f"{name} exited with code {code} on SIGTERM; its log: "
                                    f"{LOGS.relative_to(ROOT) / (name + '.log')}")


def run(opts: Options) -> Results:
    cases = prepare_repo()
    chosen = [cases[name] for name in opts.models]
    started = time.time()
    results = Results(machine=machine(), command=command(opts), threads=opts.threads)
    print("ceiling (in-process backend):", flush=True)
    for case in chosen:
        points = ceiling(case, opts)
        results.sweeps[case.name] = points
        results.queue_delay_us[case.name] = queue_delay_us(case)
    children = Children(LOGS)
    try:
        print("load runs (closed loop, gRPC):", flush=True)
        if opts.floor:
            results.rows += measure_floor(opts, children, cases["digits"].payload)
        measure_served(opts, chosen, children, results)
    finally:
        children.close()
    results.elapsed_s = time.time() - started
    return results


def queue_delay_us(case: Case) -> int:
    batching = load_model_config(case.config_path, case.name).dynamic_batching
    return batching.max_queue_delay_microseconds if batching else 0


def command(opts: Options) -> str:
    python = Path(sys.executable)
    with_root = python.is_relative_to(ROOT)
    shown = str(python.relative_to(ROOT)) if with_root else "python"
    return shlex.join([shown, "-m", "loadtest.bench", *opts.argv])


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


def machine() -> dict[str, str]:
    """What the numbers depend on: cores, CPU, memory, versions, and the cost of a wake-up."""
    memory = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": f"{len(os.sched_getaffinity(0))} (of {os.cpu_count()} on the machine)",
        "CPU": f"{_proc_field('/proc/cpuinfo', 'model name')}, "
               f"{_proc_field('/proc/cpuinfo', 'cpu MHz')} MHz",
        "memory": memory,
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(_version(*d) for d in (
            ("onnxruntime", "onnxruntime-gpu"), ("torch",), ("grpcio",), ("protobuf",),
            ("numpy",), ("uvloop",))),
        "cross-process wake-up round trip (pipe ping-pong, p50)": f"{wakeup_rtt_us():.0f} µs",
    }


HEADER = """\
Every row is one measurement on this machine, in one run, with the load generator on the same
cores. **in-process** rows call the ONNX Runtime backend inside the benchmark process with the
runtime's thread budget: the *ceiling* is its best rows/s over batch sizes 1-64 (its latencies
are those of one batch call); *batch 1* is one row alone. **runtime (gRPC)** is a `tensorgate
runtime` worker called directly; **gateway → runtime (gRPC)** is the full path, `tensorgate
gateway` forwarding to that same worker. Load rows are a closed loop: *concurrency* callers in
one `grpc.aio` client process, each sending its next one-row ModelInferRequest
(raw_input_contents, pre-serialized) as soon as the previous one is answered; latencies are
measured by the client. *÷ ceiling* is requests/s ÷ ceiling rows/s. The **do-nothing grpc.aio
server** answers a fixed ModelInferResponse: the most one grpcio server process can answer this
client on these cores.
"""


def _table(header: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    align = ["---" if i < left else "---:" for i in range(len(header))]
    return [f"| {' | '.join(cells)} |" for cells in (header, align, *rows)]


def _num(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _main_table(results: Results) -> list[str]:
    rows: list[list[str]] = []
    for model, sweep in results.sweeps.items():
        best = max(sweep, key=lambda p: p.rows_per_s)
        one = sweep[0]
        rows.append([model, f"in-process ceiling (batch {best.batch})", "-",
                     f"{best.rows_per_s:.0f} rows/s", _num(best.p50_ms), _num(best.p99_ms),
                     "1", "-"])
        rows.append([model, "in-process, batch 1", "1", f"{one.rows_per_s:.0f}",
                     _num(one.p50_ms), _num(one.p99_ms),
                     _ratio(one.rows_per_s / best.rows_per_s), "-"])
        rows += [[model, r.path, r.concurrency, f"{r.rate:.0f}", _num(r.p50_ms), _num(r.p99_ms),
                  _ratio(r.rate / best.rows_per_s), str(r.errors)]
                 for r in results.rows if r.model == model]
    rows += [[r.model, r.path, r.concurrency, f"{r.rate:.0f}", _num(r.p50_ms), _num(r.p99_ms),
              "-", str(r.errors)] for r in results.rows if r.path == FLOOR]
    return _table(["model", "path", "concurrency", "requests/s", "p50 ms", "p99 ms",
                   "÷ ceiling", "errors"], rows)


def _added_latency(results: Results) -> list[str]:
    floor = results.find("-", FLOOR, 1)
    hop = _num(1000 * floor.p50_ms, 0) if floor else "-"
    rows = []
    for model, sweep in results.sweeps.items():
        gateway, runtime = results.find(model, GATEWAY, 1), results.find(model, RUNTIME, 1)
        if gateway is None or runtime is None:
            continue
        delay = results.queue_delay_us[model]
        to_runtime = 1000 * (runtime.p50_ms - sweep[0].p50_ms)
        rows.append([model, _num(1000 * (gateway.p50_ms - runtime.p50_ms), 0),
                     _num(to_runtime, 0), str(delay), _num(to_runtime - delay, 0), hop])
    return _table(["model", "gateway - runtime", "runtime - in-process batch 1",
                   "of which max_queue_delay", "the rest", "do-nothing server p50"], rows,
                  left=1)


def _floor(results: Results, concurrency: int) -> list[str]:
    floor = results.find("-", FLOOR, concurrency)
    if floor is None:
        return ["(not measured: --no-floor)"]
    rows = []
    for model in results.sweeps:
        for path in (GATEWAY, RUNTIME):
            row = results.find(model, path, concurrency)
            if row is not None:
                rows.append([model, path, f"{row.rate:.0f}", f"{floor.rate:.0f}",
                             _ratio(row.rate / floor.rate)])
    return _table(["model", "path", f"requests/s at c{concurrency}", "floor requests/s",
                   "÷ floor"], rows)


def _sweep(results: Results) -> list[str]:
    rows = [[model, str(p.batch), f"{p.rows_per_s:.0f}", _num(p.p50_ms), _num(p.p99_ms)]
            for model, sweep in results.sweeps.items() for p in sweep]
    return _table(["model", "batch", "rows/s", "p50 ms per call", "p99 ms per call"], rows,
                  left=1)


def _cpu(results: Results) -> list[str]:
    """CPU time per answered call of each process, and the cores they kept busy together."""
    names = ["client", "floor", "gateway", "runtime"]
    rows = []
    for r in results.rows:
        total = sum(r.cpu_us.values())
        rows.append([r.model, r.path, r.concurrency,
                     *(_num(r.cpu_us[n], 0) if n in r.cpu_us else "-" for n in names),
                     _num(total, 0), _num(total * r.rate / 1e6, 2)])
    return _table(["model", "path", "concurrency", *(f"{n} µs" for n in names), "total µs",
                   "cores busy"], rows)


def _batching(results: Results) -> list[str]:
    rows = [[r.model, r.path, r.concurrency, str(b[0]), _num(b[1], 1), _num(b[2], 0),
             _num(b[3], 0)] for r in results.rows if (b := r.batching) is not None]
    return _table(["model", "path", "concurrency", "batches", "rows per batch",
                   "queue µs per request", "compute µs per batch"], rows)


def render(results: Results, concurrency: int) -> str:
    lines = ["# Benchmark results", "", HEADER, f"Command: `{results.command}` "
             f"(took {results.elapsed_s:.0f} s)", ""]
    lines += [f"- {key}: {value}" for key, value in results.machine.items()]
    lines += ["", "## Throughput and latency", "", *_main_table(results), ""]
    lines += ["## Added latency at concurrency 1 (p50 differences, µs)", "",
              "The runtime's dynamic batcher holds a lone request for the model's "
              "`max_queue_delay_microseconds` before running it (Triton's rule), so that delay "
              "is part of *runtime - in-process*. The last column is a whole round trip to the "
              "do-nothing server at concurrency 1: what one gRPC hop costs here.", "",
              *_added_latency(results), ""]
    lines += ["## Against the do-nothing gRPC floor", "", *_floor(results, concurrency), ""]
    lines += ["## What the runtime's batcher did (its statistics over each run)", "",
              *_batching(results), ""]
    lines += ["## Where the CPU goes (CPU time per answered call)", "",
              "Each process's user + system CPU over the whole run (warm-up included) divided "
              "by the calls answered; *cores busy* = total µs * requests/s.", "",
              *_cpu(results), ""]
    lines += [f"## Ceiling sweep (in-process, {results.threads} threads)", "",
              *_sweep(results), ""]
    failed = [r for r in results.rows if r.errors]
    if failed or results.problems:
        lines += ["## Errors", ""]
        lines += [f"- {r.model} {r.path} c{r.concurrency}: {r.errors} errors, first: "
                  f"`{r.first_error}`" for r in failed]
        lines += [f"- {problem}" for problem in results.problems]
        lines.append("")
    return "\n".join(lines)


def _terminate(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # so every `finally` runs and the children are stopped


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    os.chdir(ROOT)
    try:
        results = run(opts)
    except KeyboardInterrupt:
        print("interrupted; every server was stopped", file=sys.stderr)
        return 130
    text = render(results, opts.concurrency)
    print()
    print(text)
    if opts.out is not None:
        opts.out.write_text(text)
        print(f"wrote {opts.out}")
    errors = sum(row.errors for row in results.rows)
    if errors or results.problems:
        print(f"FAILED: {errors} errors under load; {len(results.problems)} other problems",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
