"""Memory over many large requests (issue 23): `tensorgate serve` with gpu_bench's passthrough
model on the CPU (224x224 fp16 images, next to no compute), h2load sending them over gRPC or
HTTP binary, and the gateway's and the runtime's RSS after warm-up, in the middle and at the
end. Exit 1 when either grew by more than the bound after warm-up, or any request failed.

    python -m loadtest.rss_soak [--protocol grpc|http] [--requests 100000] [--max-growth-mib 32]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtest import gpu_bench
from loadtest.cases import METHOD, Case, check_grpc
from loadtest.servers import Children, any_of, free_port
from loadtest.soak import errors
from loadtest.tools import MissingTool, ensure

ROLES = ("gateway", "runtime")
#: /proc/PID/status fields summed per role: all resident memory, and its shared part (the
#: gateway's arena and the runtime's mappings of it count in both processes).
FIELDS = ("VmRSS", "RssShmem")


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: (parent pid, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            found[int(entry.name)] = (ppid, (entry / "cmdline").read_bytes()
                                      .replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError, IndexError):
            continue
    return found


def role_memory(root: int) -> dict[str, tuple[int, int]]:
    """KiB of each of FIELDS, summed over the gateway processes and the runtime workers below
    ``root`` (a `tensorgate serve`)."""
    processes = _processes()
    below: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in processes.items() if ppid in frontier} - below
        below |= frontier
    totals = {role: [0, 0] for role in ROLES}
    for pid in below:
        role = next((r for r in ROLES if f"tensorgate {r}" in processes[pid][1]), None)
        if role is None:
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in status:
            name, _, value = line.partition(":")
            if name in FIELDS:
                totals[role][FIELDS.index(name)] += int(value.split()[0])
    return {role: (values[0], values[1]) for role, values in totals.items()}


@dataclass
class Sample:
    sent: int
    seconds: float
    memory: dict[str, tuple[int, int]]


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def growth_mib(self, role: str, first: int = 0, part: int = 0) -> float:
        """MiB of RSS (``part`` 0) or of its shared part (1) gained from sample ``first``
        (0: after warm-up) to the last."""
        return (self.samples[-1].memory[role][part] - self.samples[first].memory[role][part]
                ) / 1024


def h2load(argv: list[str], count: int, limit_s: float) -> tuple[int, int]:
    """Send ``count`` requests; (answered 2xx, the rest) as h2load counts them (HTTP statuses
    only: the gateway's own counters give the gRPC errors)."""
    done = subprocess.run([*argv[:1], "-n", str(count), *argv[1:]], capture_output=True,
                          text=True, timeout=limit_s, check=False, stdin=subprocess.DEVNULL)
    line = next((x for x in done.stdout.splitlines() if x.startswith("requests:")), "")
    if done.returncode != 0 or not line:
        raise RuntimeError(f"h2load exited {done.returncode}: {done.stdout[-1500:]}")
    words = line.replace(",", "").split()
    # Counted against the total: a request h2load never got to send fails too.
    succeeded = int(words[words.index("succeeded") - 1])
    return succeeded, int(words[words.index("total") - 1]) - succeeded


def start(children: Children, opts: argparse.Namespace, folder: Path) -> tuple[int, int, int]:
    """`tensorgate serve` over the passthrough model; its gRPC, HTTP and metrics ports."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    argv = [sys.executable, "-m", "tensorgate", "serve", "--no-auth", "--model-repository",
            str(gpu_bench.model_folder(opts).parent), "--host", "127.0.0.1", "--http-port",
            str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
            "--registry", str(folder / "registry.db")]
    if opts.gateway_processes:
        argv += ["--gateway-processes", str(opts.gateway_processes)]
    children.start("serve", argv, any_of("tensorgate ready"))
    return grpc_port, http_port, metrics_port


def load_argv(opts: argparse.Namespace, case: Case, folder: Path, ports: tuple[int, int]
              ) -> list[str]:
    """h2load's command for the protocol asked for (without -n): ``ports`` gRPC and HTTP."""
    body = folder / "request.body"
    if opts.protocol == "grpc":
        body.write_bytes(b"\x00" + len(case.grpc_body).to_bytes(4, "big") + case.grpc_body)
        streams = max(1, opts.concurrency // opts.connections)
        return ["h2load", "-t", "1", "-c", str(opts.connections), "-m", str(streams), "-d",
                str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
                f"http://127.0.0.1:{ports[0]}{METHOD}"]
    body.write_bytes(case.binary_body)
    return ["h2load", "--h1", "-t", "1", "-c", str(opts.concurrency), "-m", "1", "-d", str(body),
            "-H", "content-type: application/octet-stream",
            "-H", f"inference-header-content-length: {case.binary_header_length}",
            f"http://127.0.0.1:{ports[1]}{case.http_path}"]


def soak(opts: argparse.Namespace, folder: Path) -> Soak:
    """Warm up, sample; then the requests in ten steps, sampled after the first, the fifth
    and the last."""
    case = gpu_bench.build(opts)
    children = Children(folder)
    result = Soak()
    deadline = time.monotonic() + opts.time_limit_s
    try:
        grpc_port, http_port, metrics_port = start(children, opts, folder)
        address = f"127.0.0.1:{grpc_port}"
        check_grpc(address, case)
        argv = load_argv(opts, case, folder, (grpc_port, http_port))
        root = children.procs["serve"].pid
        sent, started = 0, 0.0
        for step in range(11):
            count = opts.warmup if step == 0 else opts.requests // 10
            ok, bad = h2load(argv, count, max(1.0, deadline - time.monotonic()))
            result.failed += bad
            sent += (ok + bad) if step else 0
            if step == 0:
                started = time.monotonic()
            if step in (0, 1, 5, 10):
                result.samples.append(Sample(sent, time.monotonic() - started,
                                             role_memory(root)))
                print(f"  {sent} requests: " + ", ".join(
                    f"{role} {mem[0] / 1024:.0f} MiB" for role, mem in
                    result.samples[-1].memory.items()), flush=True)
        children.check_alive()
        check_grpc(address, case)
        result.errors = dict(errors(metrics_port))
    finally:
        children.close()
    if children.problems:
        raise RuntimeError("; ".join(children.problems))
    return result


def report(result: Soak, opts: argparse.Namespace) -> list[str]:
    """The samples as a table, then the verdict; the problems found (none: flat)."""
    print("| requests sent | seconds | images/s | gateway RSS MiB (shared) | "
          "runtime RSS MiB (shared) |\n|---:|---:|---:|---:|---:|")
    for sample in result.samples:
        rate = f"{sample.sent / sample.seconds:.0f}" if sample.sent else "-"
        label = sample.sent or "after warm-up"
        mem = [f"{m[0] / 1024:.1f} ({m[1] / 1024:.1f})" for m in sample.memory.values()]
        print(f"| {label} | {sample.seconds:.0f} | {rate} | {mem[0]} | {mem[1]} |")
    problems = []
    middle = len(result.samples) // 2
    half = result.samples[-1].sent - result.samples[middle].sent
    for role in ROLES:
        growth = result.growth_mib(role)
        verdict = "over the bound" if growth > opts.max_growth_mib else "within the bound"
        late = result.growth_mib(role, middle)
        print(f"{role}: {growth:+.1f} MiB after warm-up ({verdict} of "
              f"{opts.max_growth_mib:g} MiB; shared {result.growth_mib(role, 0, 1):+.1f}); "
              f"from {result.samples[middle].sent} requests to the end {late:+.1f} MiB, "
              f"{late * 1024 / max(1, half) * 1000:+.0f} KiB per 1,000 requests")
        if growth > opts.max_growth_mib:
            problems.append(f"{role} RSS grew {growth:.1f} MiB")
    if result.failed or result.errors:
        problems.append(f"h2load failures {result.failed}; gateway errors by code "
                        f"{result.errors or 'none'}")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.rss_soak",
                                     description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--requests", type=int, default=100_000, help="requests measured (100000)")
    add("--warmup", type=int, default=5_000, help="requests before the first sample (5000)")
    add("--size", type=int, default=224, help="image side (224)")
    add("--protocol", choices=("grpc", "http"), default="grpc",
        help="gRPC, or HTTP/1.1 with binary tensors, one caller a connection (grpc)")
    add("--concurrency", type=int, default=64, help="h2load's callers (64)")
    add("--connections", type=int, default=8, help="gRPC: HTTP/2 connections they share (8)")
    add("--gateway-processes", type=int, default=0,
        help="serve's --gateway-processes (its default: one per core)")
    add("--max-growth-mib", type=float, default=32.0,
        help="RSS either role may gain after warm-up, MiB (32)")
    add("--time-limit-s", type=float, default=900.0, help="the whole run's ceiling (900)")
    opts = parser.parse_args(argv)
    if opts.requests < 10 or opts.warmup < 1:
        parser.error("--requests: at least 10 (ten steps); --warmup: at least 1")
    model = gpu_bench.parse_args(["--model", "passthrough", "--device", "cpu", "--size",
                                  str(opts.size), "--workers", "1x1"])
    return argparse.Namespace(**(vars(model) | vars(opts)))


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        ensure("h2load")
    except MissingTool as exc:
        print(f"loadtest.rss_soak {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tensorgate-rss-") as tmp:
        try:
            result = soak(opts, Path(tmp))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
    problems = report(result, opts)
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
