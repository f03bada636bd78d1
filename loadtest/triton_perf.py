"""NVIDIA's perf_analyzer against `tensorgate serve`, the way Triton users load-test: gRPC, gRPC
streaming and HTTP at a few concurrencies, one run with --collect-metrics and a CSV (-f).

    python -m loadtest.triton_perf --perf-analyzer PATH [--model digits] [--concurrency 1 16]

``run_point`` is one bounded perf_analyzer run for other benches (gpu_bench's shared-memory rows).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.servers import ROOT, Children, any_of, free_port

#: perf_analyzer's summary line for one concurrency.
_LINE = re.compile(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec")
MODES = {"gRPC": ("-i", "grpc"), "gRPC --streaming": ("-i", "grpc", "--streaming"),
         "HTTP": ("-i", "http")}


def find() -> str | None:
    """perf_analyzer (or a wrapper that runs it): the PERF_ANALYZER variable, else PATH."""
    return os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")


class PerfFailed(RuntimeError):
    """perf_analyzer exited with an error; the message is what it said (its ``error:`` lines,
    which carry the server's own message where the server refused)."""


@dataclass(frozen=True)
class Point:
    """One perf_analyzer run at one concurrency: infer/s, client latency percentiles (µs, from
    its CSV), and the run's wall time, setup included."""

    concurrency: int
    rate: float
    p50_us: int
    p90_us: int
    p99_us: int
    seconds: float


def said(output: str) -> str:
    """perf_analyzer's error lines, joined; else the end of its output."""
    lines = [line.strip().removeprefix("error: ") for line in output.splitlines()
             if line.startswith("error:") or "had error" in line or "Failed to" in line]
    text = "; ".join(dict.fromkeys(line for line in lines if line))
    return text or output.strip()[-500:] or "no output"


def run_point(tool: str, model: str, address: str, protocol: str, concurrency: int,
              seconds: float, extra: tuple[str, ...] = (), warmup: int = 0) -> Point:
    """perf_analyzer against ``address`` over ``protocol`` (grpc or http) at ``concurrency``
    for about ``seconds``: three windows of a third each, merged (stability is not waited
    for, so the run is bounded), after ``warmup`` requests that are not counted."""
    interval_ms = max(200, round(seconds * 1000 / 3))
    with tempfile.TemporaryDirectory(prefix="tensorgate-pa-") as tmp:
        table = Path(tmp) / "point.csv"
        argv = [tool, "-m", model, "-u", address, "-i", protocol, "--concurrency-range",
                str(concurrency), "--measurement-interval", str(interval_ms),
                "--max-trials", "3", "--stability-percentage", "999", "-f", str(table), *extra]
        if warmup:
            argv += ["--warmup-request-count", str(warmup)]
        started = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=60 + 4 * seconds, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise PerfFailed(f"perf_analyzer ran past {exc.timeout:.0f} s") from exc
        wall = time.monotonic() - started
        if done.returncode != 0 or not table.exists():
            raise PerfFailed(said(done.stdout + "\n" + done.stderr))
        with table.open() as rows:
            row = next(csv.DictReader(rows))
    return Point(int(row["Concurrency"]), float(row["Inferences/Second"]),
                 int(row["p50 latency"]), int(row["p90 latency"]), int(row["p99 latency"]), wall)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--perf-analyzer", required=True,
                        help="the perf_analyzer binary (or a wrapper that runs it)")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--interval-ms", type=int, default=3000,
                        help="perf_analyzer's --measurement-interval (3000)")
    return parser.parse_args(argv)


def serve(children: Children, folder: Path) -> dict[str, int]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    argv = [sys.executable, "-m", "tensorgate", "serve", "--no-auth", "--model-repository",
            str(ROOT / "models"), "--host", "127.0.0.1", "--http-port", str(ports["http"]),
            "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"]),
            "--registry", str(folder / "registry.db")]
    children.start("serve", argv, any_of("tensorgate ready"))
    return ports


def measure(opts: argparse.Namespace, ports: dict[str, int], mode: tuple[str, ...],
            extra: tuple[str, ...] = ()) -> list[tuple[int, float, int]]:
    """(concurrency, infer/s, average latency µs) for each concurrency perf_analyzer reported."""
    port = ports["grpc"] if "grpc" in mode else ports["http"]
    rows = []
    for concurrency in opts.concurrency:
        argv = [opts.perf_analyzer, "-m", opts.model, "-u", f"127.0.0.1:{port}", *mode,
                "--concurrency-range", str(concurrency), "--measurement-interval",
                str(opts.interval_ms), "--max-trials", "10", "--stability-percentage", "50",
                *(part.format(concurrency=concurrency) for part in extra)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        found = _LINE.findall(done.stdout)
        if done.returncode != 0 or not found:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}")
        rows += [(int(c), float(rate), int(us)) for c, rate, us in found]
    return rows


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tensorgate-pa-") as tmp:
        folder = Path(tmp)
        children = Children(folder)
        try:
            ports = serve(children, folder)
            print("| path | concurrency | infer/s | avg latency µs |\n|---|---:|---:|---:|")
            for name, mode in MODES.items():
                for concurrency, rate, latency in measure(opts, ports, mode):
                    print(f"| {name} | {concurrency} | {rate:,.0f} | {latency:,} |", flush=True)
            collect = ("--collect-metrics", "--metrics-url",
                       f"http://127.0.0.1:{ports['metrics']}/metrics", "-f",
                       str(folder / "metrics-{concurrency}.csv"))
            for concurrency, rate, latency in measure(opts, ports, MODES["gRPC"], collect):
                print(f"| gRPC --collect-metrics -f | {concurrency} | {rate:,.0f} | {latency:,} |")
            for csv in sorted(folder.glob("metrics-*.csv")):
                print(f"\n{csv.name}:\n{csv.read_text().strip()}")
        finally:
            children.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
