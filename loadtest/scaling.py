"""Gateway scaling (issue 3, target 4): ``digits`` through 1, 2, 4, ... gateway processes sharing
the ports (SO_REUSEPORT), in front of the same runtime workers, in one run:

    python -m loadtest.scaling [--processes 1,2,4,8] [--runtimes 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.cases import (
    HEADER_LENGTH,
    METHOD,
    ROOT,
    Case,
    check_grpc,
    check_http,
    digits_without_delay,
    fill_requests,
)
from loadtest.loadgen import TOOLS, Load, Outcome, Target, closed_loop, tool_version
from loadtest.machine import machine
from loadtest.servers import Children, start_gateway, start_runtime
from loadtest.tools import MissingTool, ensure

REPO = ROOT / "loadtest" / ".models-scaling"
LOGS = REPO / ".logs"


@dataclass
class Point:
    """One load run against ``processes`` gateway processes."""

    processes: int
    protocol: str
    outcome: Outcome
    rss_mib: float


def digits_repo() -> Case:
    """The shipped ``digits`` version 1 on the CPU without queue delay: the runtimes' cost stays
    what it is on any machine, so the gateway's share is what changes."""
    LOGS.mkdir(parents=True, exist_ok=True)
    case = Case("digits", "1", digits_without_delay(REPO / "digits", device="cpu"))
    fill_requests(case)
    return case


def start_runtimes(children: Children, count: int) -> list[str]:
    """``count`` runtime workers over the scaling repository, one compute thread each; their
    lanes."""
    return [start_runtime(children, f"runtime{index}", REPO, 1)[1] for index in range(count)]


def targets(case: Case, grpc_address: str, http_address: str) -> dict[str, Target]:
    binary = ((HEADER_LENGTH, str(case.binary_header_length)),
              ("Content-Type", "application/octet-stream"))
    return {"grpc": Target("grpc", grpc_address, METHOD, case.grpc_body,
                           answer_size=check_grpc(grpc_address, case)),
            "http": Target("http", http_address, case.http_path, case.binary_body, binary)}


def measure(opts: argparse.Namespace, case: Case, children: Children, lanes: list[str],
            processes: int) -> list[Point]:
    points = []
    grpc_address, http_address = start_gateway(children, lanes, ("--no-auth",),
                                                   processes)
    try:
        for protocol, target in targets(case, grpc_address, http_address).items():
            if protocol not in opts.protocols:
                continue
            connections = opts.connections if protocol == "grpc" else opts.concurrency
            load = Load(opts.concurrency, connections, opts.warmup, opts.duration,
                        threads=opts.generator_threads)
            outcome = closed_loop(target, load, children.cpu_seconds)
            children.check_alive()
            check_grpc(grpc_address, case)
            check_http(http_address, case, binary=True)
            rss = children.rss_mib().get("gateway", 0.0)
            points.append(Point(processes, protocol, outcome, rss))
            print(f"  {processes} gateway processes, {protocol}: {outcome.rate:8.0f} req/s, "
                  f"p50 {outcome.p('50'):.2f} ms, p99 {outcome.p('99'):.2f} ms, errors "
                  f"{outcome.errors}  [{outcome.generator}]", flush=True)
    finally:
        code = children.stop("gateway")
        if code != 0:
            children.problems.append(f"gateway ({processes} processes) exited with {code}")
    return points


def render(opts: argparse.Namespace, points: list[Point], facts: dict[str, str]) -> str:
    lines = ["# Gateway scaling (issue 3, target 4)", "",
             f"Command: `python -m loadtest.scaling {' '.join(opts.argv)}`", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    lines += ["", f"`digits` (CPU, no queue delay) behind {opts.runtimes} runtime workers "
              "(one compute thread each); the gateway processes share the ports with "
              "SO_REUSEPORT; every run is checked with real gRPC and HTTP calls before and after.",
              "", "| protocol | gateway processes | generator | req/s | ratio to 1 process | "
              "p50 ms | "
              "p99 ms | gateway cores busy | gateway CPU ms / 1k req | runtimes' cores busy | "
              "generator cores | gateway RSS MiB (all processes) | errors |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for protocol in opts.protocols:
        rows = [p for p in points if p.protocol == protocol]
        base = next((p.outcome.rate for p in rows if p.processes == 1), 0.0)
        for p in rows:
            o = p.outcome
            per_k = o.cores("gateway") * o.window_s / max(1, o.answered) * 1e6
            lines.append(
                f"| {protocol} | {p.processes} | {o.generator} | {o.rate:.0f} | "
                f"{o.rate / base if base else float('nan'):.2f} | {o.p('50'):.2f} | "
                f"{o.p('99'):.2f} | {o.cores('gateway'):.2f} | {per_k:.0f} | "
                f"{o.cores('runtime'):.2f} | {o.client_cpu_s / o.window_s:.2f} | "
                f"{p.rss_mib:.0f} | {o.errors} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.scaling", description=__doc__)
    add = parser.add_argument
    add("--processes", default="1,2,4,8", help="gateway process counts to measure (1,2,4,8)")
    add("--runtimes", type=int, default=max(1, (os.cpu_count() or 2) // 4),
        help="runtime workers behind the gateway (a quarter of the cores)")
    add("--protocols", default="grpc,http", help="grpc (h2load), http (wrk, binary tensors)")
    add("--concurrency", type=int, default=256,
        help="closed-loop callers (256); over HTTP each has its own connection")
    add("--connections", type=int, default=64,
        help="gRPC connections the callers share (64): SO_REUSEPORT spreads connections, "
             "not requests, so there are several per process")
    add("--generator-threads", type=int, default=4, help="h2load / wrk threads (4)")
    add("--duration", type=float, default=5.0, help="seconds measured per run (5)")
    add("--warmup", type=float, default=1.5, help="seconds of load before each run (1.5)")
    add("--out", type=Path, default=None, help="write the report here too")
    opts = parser.parse_args(argv)
    opts.processes = [int(n) for n in opts.processes.split(",") if n]
    opts.protocols = [p for p in opts.protocols.split(",") if p]
    if not opts.processes or min(opts.processes) < 1 or opts.runtimes < 1:
        parser.error("--processes and --runtimes take counts of at least 1")
    if set(opts.protocols) - {"grpc", "http"}:
        parser.error("--protocols: grpc, http")
    opts.argv = argv
    return opts


def run(opts: argparse.Namespace, children: Children) -> list[Point]:
    """Every process count of ``opts`` over each of its protocols, in front of the same
    runtimes."""
    case = digits_repo()
    lanes = start_runtimes(children, opts.runtimes)
    points: list[Point] = []
    for processes in opts.processes:
        points += measure(opts, case, children, lanes, processes)
    return points


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    try:
        ensure(*(TOOLS[p] for p in opts.protocols))
    except MissingTool as exc:
        print(f"loadtest.scaling {exc}", file=sys.stderr)
        return 2
    facts = machine()
    facts["generators"] = ", ".join(tool_version(TOOLS[p]) for p in opts.protocols)
    children = Children(LOGS)
    try:
        points = run(opts, children)
    finally:
        children.close()
    facts["took"] = f"{time.time() - started:.0f} s"
    text = render(opts, points, facts)
    print(text)
    if opts.out is not None:
        opts.out.write_text(text)
    errors = sum(p.outcome.errors for p in points)
    if errors or children.problems:
        print(f"FAILED: {errors} errors; {children.problems}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
