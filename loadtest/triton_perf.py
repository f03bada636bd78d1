"""NVIDIA's perf_analyzer against `tensorgate serve`, the way Triton users load-test: gRPC, gRPC
streaming and HTTP at a few concurrencies, one run with --collect-metrics and a CSV (-f).

    python -m loadtest.triton_perf --perf-analyzer PATH [--model digits] [--concurrency 1 16]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtest.servers import ROOT, Children, any_of, free_port

#: perf_analyzer's summary line for one concurrency.
_LINE = re.compile(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec")
MODES = {"gRPC": ("-i", "grpc"), "gRPC --streaming": ("-i", "grpc", "--streaming"),
         "HTTP": ("-i", "http")}


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
