"""`make loadtest`: start `tensorgate serve --no-auth` on free ports, run a short headless locust
scenario against it, print the summary and where the reports are; exit as locust did."""

from __future__ import annotations

import argparse
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loadtest.locust import venv

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
READY = re.compile(r"tensorgate ready: HTTP :(\d+), gRPC :(\d+), metrics :(-?\d+)")


@dataclass
class Served:
    http: str
    grpc: str
    metrics: str
    output: list[str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(registry: Path, *extra: str, metrics_port: int = -1,
          auth: bool = False) -> Iterator[Served]:
    """`tensorgate serve` (--no-auth unless `auth`; its first admin key is then beside
    `registry`) on 127.0.0.1 port 0, until its ready line; SIGTERM at exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorgate", "serve", *(() if auth else ("--no-auth",)),
         "--host", "127.0.0.1",
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", str(metrics_port),
         "--registry", str(registry), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []
    threading.Thread(target=_pump, args=(process, lines), daemon=True).start()
    try:
        match = None
        while match is None and (line := lines.get(timeout=120)) is not None:
            output.append(line)
            match = READY.search(line)
        if match is None:
            raise RuntimeError("tensorgate serve exited before it was ready:\n" + "".join(output))
        yield Served(f"127.0.0.1:{match.group(1)}", f"127.0.0.1:{match.group(2)}",
                     f"127.0.0.1:{metrics_port}", output)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _pump(process: subprocess.Popen, lines: queue.Queue) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put(None)


def locust_argv(served: Served, out: Path, users: int, run_time: str, *extra: str) -> list[str]:
    """A headless run with its CSV and HTML reports written into `out`."""
    return [str(venv.python()), "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--host", f"http://{served.http}", "--grpc-address", served.grpc,
            "-u", str(users), "-r", str(users), "-t", run_time, "--stop-timeout", "5",
            "--csv", str(out / "tensorgate"), "--html", str(out / "report.html"), *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=4, help="locust users (4)")
    parser.add_argument("--run-time", default="10s", help="how long to load (10s)")
    parser.add_argument("--tags", default="steady", help="scenario tags (steady)")
    parser.add_argument("--threads", default="1", help="the server's compute threads (1)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "loadtest",
                        help="report folder (build/loadtest)")
    parser.add_argument("locust_args", nargs="*",
                        help="after --: more locust options, e.g. --p99-ms 50")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tensorgate-loadtest-") as tmp, \
            serve(Path(tmp) / "r.db", "--threads", args.threads,
                  "--gateway-processes", "1") as served:
        command = locust_argv(served, args.out, args.users, args.run_time, "--only-summary",
                              "--tags", *args.tags.split(","), *args.locust_args)
        code = subprocess.run(command, cwd=ROOT).returncode
    print(f"reports: {args.out / 'report.html'} and {args.out}/tensorgate_*.csv")
    return code


if __name__ == "__main__":
    sys.exit(main())
