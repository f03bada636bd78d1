"""End-to-end benchmark: the in-process ceiling; do-nothing gRPC and HTTP floors; the runtime
over gRPC; the gateway over gRPC, HTTP JSON and HTTP binary; the floors, a compute-heavy
model's ceiling and the runtime at one caller, each in turn with the gateway path; an open-loop
run. h2load drives gRPC and wrk HTTP; missing, they are installed where this process may.

Run ``python -m loadtest.bench`` (``make bench``); it rewrites ``loadtest/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from common.settings import default_threads
from loadtest import policy_bench
from loadtest.cases import (
    BATCH_SIZES,
    HEADER_LENGTH,
    LOGS,
    METHOD,
    MODELS,
    ROOT,
    BatchPoint,
    Case,
    ceiling,
    check_grpc,
    check_http,
    prepare_repo,
)
from loadtest.floors import floor_target
from loadtest.inturn import Check, Run, ceiling_run, load_run, take_turns
from loadtest.loadgen import TOOLS, Load, Target, closed_loop, open_loop, tool_version
from loadtest.machine import machine
from loadtest.report import (
    FLOORS,
    GW_BINARY,
    GW_GRPC,
    GW_JSON,
    RUNTIME,
    OpenRow,
    Results,
    Row,
    render,
)
from loadtest.servers import (
    Children,
    Probe,
    batching,
    runtime_probe,
    start_floor,
    start_servers,
    stop_servers,
)
from loadtest.tools import MissingTool, ensure

DEFAULT_OUT = ROOT / "loadtest" / "RESULTS.md"
OPEN_LOOP_FRACTIONS = (0.5, 0.8)
#: A model whose best batch takes this long in-process is compute-heavy: its served paths also
#: run with enough callers to fill its batches on every instance (issue 3, target 2).
HEAVY_BATCH_MS = 1.0
#: Rounds of paths run in turn (floors or ceiling, and the gateway path).
ALTERNATING_ROUNDS = 3


@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    ceiling_s: float
    models: tuple[str, ...]
    concurrency: int
    connections: int
    threads: int
    gateway_processes: int
    floor: bool
    open_loop: bool
    fill: bool
    out: Path | None
    argv: tuple[str, ...]


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    add = parser.add_argument
    add("--duration", type=float, default=10.0, help="seconds measured per load run (10)")
    add("--warmup", type=float, default=1.5,
        help="seconds of load before each measurement, not measured (1.5)")
    add("--models", default=",".join(MODELS), help="digits,heavy,resnet50")
    add("--concurrency", type=int, default=64,
        help="closed-loop callers of the loaded runs (64); 1 is always run too")
    add("--connections", type=int, default=8,
        help="HTTP/2 connections the gRPC callers share (8; h2load -c, with -m = the rest)")
    add("--threads", type=int, default=default_threads(),
        help="compute threads: the runtime's --threads and the ceiling's")
    add("--gateway-processes", type=int, default=1,
        help="gateway processes (1); N > 1 starts `tensorgate gateway --processes N`")
    add("--no-floor", action="store_true", help="skip the do-nothing servers")
    add("--no-open-loop", action="store_true", help="skip the open-loop runs")
    add("--no-fill", action="store_true",
        help="skip the runs of compute-heavy models with enough callers to fill their best batch")
    add("--quick", action="store_true",
        help="a smoke run: 1 s per measurement; writes only with --out")
    add("--out", type=Path, default=None, help=f"results file ({DEFAULT_OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        parser.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    if min(args.concurrency, args.connections, args.gateway_processes) < 1:
        parser.error("--concurrency, --connections and --gateway-processes must be at least 1")
    duration, warmup = (1.0, 0.5) if args.quick else (args.duration, args.warmup)
    out = args.out if args.out is not None or args.quick else DEFAULT_OUT
    return Options(duration, warmup, max(0.3, duration / len(BATCH_SIZES)), models,
                   args.concurrency, args.connections, args.threads, args.gateway_processes,
                   not args.no_floor, not args.no_open_loop, not args.no_fill, out, tuple(argv))


def concurrencies(opts: Options, best: BatchPoint | None, fill: int) -> tuple[int, ...]:
    """--concurrency and 1; and `fill` callers for a compute-heavy model (64 callers cannot
    fill two instances' batches of 64 rows)."""
    if not opts.fill or not compute_heavy(best) or fill <= opts.concurrency:
        return (opts.concurrency, 1)
    return (opts.concurrency, 1, fill)


def compute_heavy(best: BatchPoint | None) -> bool:
    """Whether the model's best in-process batch takes HEAVY_BATCH_MS or more."""
    return best is not None and best.p50_ms >= HEAVY_BATCH_MS


def measure(opts: Options, children: Children, model: str, path: str, target: Target,
            check: Check, probe: Probe | None = None, levels: tuple[int, ...] = ()) -> list[Row]:
    """The path at each concurrency of `levels` (--concurrency and 1 by default); a real call
    checks the answer before and after."""
    rows = []
    for concurrency in levels or (opts.concurrency, 1):
        check()
        load = Load(concurrency, opts.connections, opts.warmup, opts.duration)
        counts = probe() if probe else None
        outcome = closed_loop(target, load, children.cpu_seconds)
        row = Row(model, path, target.protocol, concurrency, outcome, children.rss_mib())
        if probe is not None and counts is not None:
            row.batching = batching(probe() - counts)
        children.check_alive()
        check()
        print(f"  {model} {path} c{concurrency}: {outcome.rate:8.0f} req/s, "
              f"p50 {outcome.p('50'):.3f} ms, p99 {outcome.p('99'):.3f} ms, "
              f"errors {outcome.errors}  [{outcome.generator}]", flush=True)
        rows.append(row)
    return rows


def measure_floors(opts: Options, children: Children, case: Case) -> list[Row]:
    """The do-nothing gRPC server, then the do-nothing HTTP app, each alone on the machine and
    of as many processes as the gateway."""
    rows = []
    for protocol in ("grpc", "http"):
        address = start_floor(children, protocol, processes=opts.gateway_processes)
        try:
            target, check = floor_target(protocol, address, case)
            rows += measure(opts, children, "-", FLOORS[protocol], target, check)
        finally:
            children.stop("floor")
    return rows


def measure_alternating(opts: Options, children: Children, case: Case,
                        paths: dict[str, tuple[Target, Check]], results: Results) -> None:
    """Each floor and the gateway path held against it (gRPC; HTTP binary), in turn at
    --concurrency: this VM drifts by tens of percent within minutes, so a ratio of runs far
    apart says as much about the VM as about the path."""
    plan: list[tuple[str, Run]] = []
    try:
        for protocol, path in (("grpc", GW_GRPC), ("http", GW_BINARY)):
            address = start_floor(children, protocol, f"floor-{protocol}",
                                  opts.gateway_processes)
            plan += [_turn(opts, children, results, FLOORS[protocol],
                           *floor_target(protocol, address, case)),
                     _turn(opts, children, results, path, *paths[path])]
        results.alternating = take_turns(plan, _rounds(opts)).rates
    finally:
        for protocol in ("grpc", "http"):
            children.stop(f"floor-{protocol}")


def measure_ceiling_in_turn(opts: Options, children: Children, case: Case,
                            paths: dict[str, tuple[Target, Check]], results: Results) -> None:
    """A compute-heavy model's in-process ceiling (its best layout and batch size) and its
    gateway paths (gRPC; HTTP binary) at --concurrency, in turn (issue 3, target 2)."""
    best = results.ceiling(case.name)
    if best is None or not compute_heavy(best):
        return
    plan = [(f"in-process ceiling ({best.layout})",
             ceiling_run(case, best, opts.threads, max(opts.ceiling_s, opts.duration / 2)))]
    plan += [_turn(opts, children, results, path, *paths[path]) for path in (GW_GRPC, GW_BINARY)]
    results.ceiling_turns[case.name] = take_turns(plan, _rounds(opts))


def measure_latency_in_turn(opts: Options, children: Children,
                            paths: dict[str, tuple[Target, Check]], results: Results) -> None:
    """The runtime over gRPC and the gateway in front of it, one caller each, in turn: the
    added-latency target's difference of p50s, from runs next to each other."""
    plan = [_turn(opts, children, results, path, *paths[path], concurrency=1)
            for path in (RUNTIME, GW_GRPC)]
    results.latency_turns = take_turns(plan, _rounds(opts))


def _rounds(opts: Options) -> int:
    return ALTERNATING_ROUNDS if opts.duration >= 2 else 1


def _turn(opts: Options, children: Children, results: Results, name: str, target: Target,
          check: Check, concurrency: int = 0) -> tuple[str, Run]:
    load = Load(concurrency or opts.concurrency, opts.connections, opts.warmup, opts.duration)
    return name, load_run(name, target, check, load, children.cpu_seconds, results.problems)


def served_targets(case: Case, runtime: str, gateway_grpc: str, gateway_http: str
                   ) -> list[tuple[str, Target, Check]]:
    """Each served path of one model: its name, what the load sends, and its answer check."""
    binary_headers = ((HEADER_LENGTH, str(case.binary_header_length)),
                      ("Content-Type", "application/octet-stream"))
    return [
        (RUNTIME, Target("grpc", runtime, METHOD, case.grpc_body,
                         answer_size=check_grpc(runtime, case)),
         lambda: check_grpc(runtime, case)),
        (GW_GRPC, Target("grpc", gateway_grpc, METHOD, case.grpc_body,
                         answer_size=check_grpc(gateway_grpc, case)),
         lambda: check_grpc(gateway_grpc, case)),
        (GW_JSON, Target("http", gateway_http, case.http_path, case.json_body,
                         (("Content-Type", "application/json"),)),
         lambda: check_http(gateway_http, case, binary=False)),
        (GW_BINARY, Target("http", gateway_http, case.http_path, case.binary_body,
                           binary_headers),
         lambda: check_http(gateway_http, case, binary=True)),
    ]


def measure_served(opts: Options, cases: list[Case], children: Children,
                   results: Results) -> None:
    """Each model through the runtime directly, then through the gateway (gRPC, HTTP JSON,
    HTTP binary); the open-loop runs; then stop both servers."""
    runtime, gateway_grpc, gateway_http = start_servers(children, opts.threads,
                                                        opts.gateway_processes)
    for case in cases:
        probe = runtime_probe(runtime, case)
        levels = concurrencies(opts, results.ceiling(case.name), case.fill_callers())
        served = served_targets(case, runtime, gateway_grpc, gateway_http)
        paths = {name: (target, check) for name, target, check in served}
        if case.name == "digits" and opts.floor:
            measure_alternating(opts, children, case, paths, results)
        if case.name == "digits":
            measure_latency_in_turn(opts, children, paths, results)
        measure_ceiling_in_turn(opts, children, case, paths, results)
        for path, target, check in served:
            # NOTE: images as JSON numbers are not how a batch gets filled (each is ~5 times
            # its binary size to parse), and hundreds in flight swell the gateway.
            results.rows += measure(opts, children, case.name, path, target, check, probe,
                                    levels[:2] if path == GW_JSON else levels)
    digits = next((case for case in cases if case.name == "digits"), None)
    top = results.find("digits", GW_GRPC, opts.concurrency)
    if opts.open_loop and digits is not None and top is not None and top.outcome.rate > 0:
        results.open_rows += measure_open_loop(opts, children, digits, gateway_grpc,
                                               top.outcome.rate)
    results.problems += stop_servers(children)


def measure_open_loop(opts: Options, children: Children, case: Case, address: str,
                      max_rate: float) -> list[OpenRow]:
    """The gateway over gRPC at fractions of its closed-loop maximum, whatever it answers."""
    rows = []
    target = Target("grpc", address, METHOD, case.grpc_body,
                    answer_size=check_grpc(address, case))
    for fraction in OPEN_LOOP_FRACTIONS:
        outcome = open_loop(target, fraction * max_rate, opts.warmup, opts.duration,
                            children.cpu_seconds)
        children.check_alive()
        check_grpc(address, case)
        print(f"  open loop {case.name} {GW_GRPC} at {fraction * max_rate:.0f} req/s: sent "
              f"{outcome.sent_per_s:.0f}/s, answered {outcome.rate:.0f}/s, p50 "
              f"{outcome.p('50'):.3f} ms, p99 {outcome.p('99'):.3f} ms, p99.9 "
              f"{outcome.p('99.9'):.3f} ms, errors {outcome.errors}  [{outcome.generator}]",
              flush=True)
        rows.append(OpenRow(case.name, GW_GRPC, fraction, max_rate, outcome))
    return rows


def describe_generators(opts: Options, results: Results) -> list[str]:
    """Which generator produced which rows, with versions and how it was driven."""
    lines = []
    for protocol, name in (("grpc", "gRPC"), ("http", "HTTP")):
        used = sorted({r.outcome.generator for r in results.rows if r.protocol == protocol})
        lines.append(f"{name} rows: {tool_version(TOOLS[protocol])}: "
                     f"{', '.join(f'`{u}`' for u in used)}")
    lines += [
        "h2load sends the framed ModelInferRequest with `content-type: application/grpc` and "
        "`te: trailers`; it counts HTTP statuses only, so each path's answer and grpc-status "
        "are checked with real grpcio calls before and after every run, and the answers' DATA "
        "bytes are checked against the good answer's size (a gRPC error carries no message).",
        f"Each run: a warm-up run of the same generator ({opts.warmup:g} s; wrk rounds to whole "
        f"seconds), then the measured run ({opts.duration:g} s) on fresh connections; latency "
        "percentiles from h2load's --log-file or wrk's histogram (a Lua `done`).",
        "Open loop: h2load --rps over connections of at most 100 requests/s each (one request "
        "per tick of its pacing timer), opened a few per ms across one tick so their sends "
        "interleave; a count of requests (-n), so each one sent is answered or counted as an "
        "error.",
    ]
    return lines


def run(opts: Options) -> Results:
    started = time.time()
    cases = prepare_repo(tuple(dict.fromkeys(("digits", *opts.models))))
    chosen = [cases[name] for name in opts.models]
    results = Results(machine(), command(opts), opts.threads, opts.gateway_processes)
    print("ceiling (in-process backend):", flush=True)
    for case in chosen:
        results.sweeps[case.name] = ceiling(case, opts.threads, opts.ceiling_s)
        results.queue_delay_us[case.name] = case.queue_delay_us()
    children = Children(LOGS)
    try:
        print("load runs:", flush=True)
        if opts.floor:
            results.rows += measure_floors(opts, children, cases["digits"])
        measure_served(opts, chosen, children, results)
        if "digits" in opts.models:
            print("policy on the hot path:", flush=True)
            results.policy = policy_bench.measure(opts.duration, opts.warmup,
                                                  1 if opts.duration < 2 else 3,
                                                  opts.concurrency)
    finally:
        children.close()
        results.problems += children.problems
    results.generators = describe_generators(opts, results)
    results.elapsed_s = time.time() - started
    return results


def command(opts: Options) -> str:
    python = Path(sys.executable)
    shown = str(python.relative_to(ROOT)) if python.is_relative_to(ROOT) else "python"
    return shlex.join([shown, "-m", "loadtest.bench", *opts.argv])


def _terminate(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # so every `finally` runs and the children are stopped


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        ensure(*TOOLS.values())
    except MissingTool as exc:
        print(f"loadtest.bench {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    os.chdir(ROOT)
    try:
        results = run(opts)
    except KeyboardInterrupt:
        print("interrupted; every server was stopped", file=sys.stderr)
        return 130
    text = render(results)
    print()
    print(text)
    if opts.out is not None:
        opts.out.write_text(text)
        print(f"wrote {opts.out}")
    errors = sum(r.outcome.errors for r in results.rows)
    # NOTE: an open loop keeps sending whatever the answers do, so near the top rate the
    # gateway's in-flight bound refuses some by design; its rows report them, the run stands.
    refused = sum(r.outcome.errors for r in results.open_rows)
    if refused:
        print(f"open loop: {refused} requests not answered OK (see its rows)", file=sys.stderr)
    if errors or results.problems:
        print(f"FAILED: {errors} errors under load; {len(results.problems)} other problems",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
