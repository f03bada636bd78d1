"""Load generation with the tools built for it: h2load for gRPC (closed loops, and open loops at
a fixed rate with ``--rps``), wrk for HTTP/1.1 closed loops; missing ones are installed where
this process may (``loadtest/tools.py``), never replaced by a Python generator.

Every run is a child process: first a warm-up run of ``warmup_s`` that is not measured, then the
measured run of ``duration_s``. The servers' CPU time is read right before and right after the
measured run; the generator's own CPU time is reported apart.
"""

from __future__ import annotations

import json
import math
import re
import resource
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtest.cases import ROOT
from loadtest.tools import ensure

Meter = Callable[[], dict[str, float]]
CALL_TIMEOUT_S = 30.0
#: The generator of each protocol's runs.
TOOLS = {"grpc": "h2load", "http": "wrk"}


@dataclass(frozen=True)
class Target:
    """What one load run sends, and where: a gRPC method or an HTTP path, the body (for gRPC the
    serialized message, unframed), extra headers, and for gRPC the wire size of a good answer."""

    protocol: str  # "grpc" or "http"
    address: str  # HOST:PORT
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    answer_size: int = 0


@dataclass(frozen=True)
class Load:
    """How hard and how long: ``concurrency`` callers, each sending its next request when the
    previous one is answered; gRPC callers share ``connections`` HTTP/2 connections."""

    concurrency: int
    connections: int
    warmup_s: float
    duration_s: float
    #: Threads of h2load or wrk (each drives its share of the connections).
    threads: int = 1

    def streams(self) -> tuple[int, int]:
        """(connections, streams per connection) whose product is the concurrency."""
        connections = max(1, min(self.connections, self.concurrency))
        while self.concurrency % connections:
            connections -= 1
        return connections, self.concurrency // connections


@dataclass
class Outcome:
    """One measured run: answers inside the window, latency percentiles, errors, and CPU."""

    generator: str
    answered: int
    window_s: float
    percentiles_ms: dict[str, float]  # "50", "90", "99", "99.9"
    errors: int = 0
    first_error: str = ""
    client_cpu_s: float = 0.0
    server_cpu_s: dict[str, float] = field(default_factory=dict)
    #: Open loop only: requests sent per second, from the send times the generator logged.
    sent_per_s: float = math.nan

    @property
    def rate(self) -> float:
        return self.answered / self.window_s if self.window_s else 0.0

    def p(self, q: str) -> float:
        return self.percentiles_ms.get(q, math.nan)

    def cores(self, prefix: str) -> float:
        """Cores the servers whose names start with ``prefix`` kept busy over the window."""
        spent = sum(v for k, v in self.server_cpu_s.items() if k.startswith(prefix))
        return spent / self.window_s if self.window_s else 0.0


QUANTILES = ("50", "90", "99", "99.9")


def percentiles_ms(latencies_ns: np.ndarray) -> dict[str, float]:
    if not len(latencies_ns):
        return {q: math.nan for q in QUANTILES}
    values = np.percentile(latencies_ns, [float(q) for q in QUANTILES]) / 1e6
    return dict(zip(QUANTILES, (float(v) for v in values)))


def tool_version(tool: str) -> str:
    try:
        text = subprocess.run([tool, "--version"] if tool == "h2load" else [tool, "-v"],
                              capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return f"{tool} (not found)"
    return text.splitlines()[0].partition(" Copyright")[0].strip() if text else tool


def closed_loop(target: Target, load: Load, meter: Meter) -> Outcome:
    """One warm-up run and one measured run: h2load for gRPC, wrk for HTTP."""
    ensure(TOOLS[target.protocol])
    with tempfile.TemporaryDirectory(prefix="tg-load-") as tmp:
        if target.protocol == "grpc":
            return _h2load(target, load, meter, Path(tmp))
        return _wrk(target, load, meter, Path(tmp))


@dataclass
class _Ran:
    stdout: str
    returncode: int
    client_cpu_s: float
    server_cpu_s: dict[str, float]


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after if name in before}


def _run(argv: list[str], limit_s: float, meter: Meter | None = None) -> _Ran:
    """Run a generator to its end (killed after ``limit_s``). With ``meter``, the servers' CPU
    over its run; its own CPU from the kernel's accounting."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = meter() if meter else {}
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(limit_s, proc.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        lines.extend(proc.stdout)
        code = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = meter() if meter else {}
    spent = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = spent.ru_utime + spent.ru_stime - usage.ru_utime - usage.ru_stime
    if code == -9:
        lines.append(f"\n(killed after {limit_s:.0f}s)")
    return _Ran("".join(lines), code, cpu, _delta(after, before))


def _limit(seconds: float) -> float:
    return seconds + CALL_TIMEOUT_S + 30.0


def _h2load_argv(target: Target, tmp: Path, connections: int, streams: int,
                 threads: int = 1) -> list[str]:
    body = tmp / "request.grpc"
    body.write_bytes(b"\x00" + len(target.body).to_bytes(4, "big") + target.body)
    argv = ["h2load", "-t", str(min(threads, connections)), "-c", str(connections),
            "-m", str(streams), "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-T", f"{CALL_TIMEOUT_S:.0f}s"]
    for name, value in target.headers:
        argv += ["-H", f"{name.lower()}: {value}"]
    return [*argv, f"http://{target.address}{target.path}"]


def _h2load(target: Target, load: Load, meter: Meter, tmp: Path) -> Outcome:
    connections, streams = load.streams()
    argv = _h2load_argv(target, tmp, connections, streams, load.threads)
    if load.warmup_s > 0:
        _run([*argv, "-D", f"{round(load.warmup_s * 1000)}ms"], _limit(load.warmup_s))
    log = tmp / "requests.tsv"
    ran = _run([*argv, "-D", f"{round(load.duration_s * 1000)}ms", "--log-file", str(log)],
               _limit(load.duration_s), meter)
    threads = f"-t {argv[2]} " if argv[2] != "1" else ""
    name = f"h2load {threads}-c {connections} -m {streams}"
    return _parse_h2load(name, ran, _log(log), target.answer_size, load.duration_s)


#: h2load paces a connection's --rps with a timer of at least 10 ms that sends whatever is due
#: when it fires: at this rate or less, one request per tick.
TICK_RPS = 100.0
#: Streams an open-loop connection may have in flight. Only past this many would a send wait
#: for an answer (coordinated omission): at 100 requests/s, after a 2.5 s stall.
OPEN_STREAMS = 256


def open_loop(target: Target, rate: float, warmup_s: float, duration_s: float,
              meter: Meter) -> Outcome:
    """``rate`` gRPC requests/s whatever the answers do (h2load --rps): over enough connections
    that each sends one request per tick of its pacing timer, opened a few per millisecond
    across one tick so their sends interleave; a count of requests (-n), so every request sent
    is answered or counted as an error. Latency runs from the actual send, which the event
    loop's timers (1 ms resolution) make late by about a millisecond at most, barring a stall
    of h2load itself."""
    if target.protocol != "grpc" or rate <= 0:
        raise ValueError(f"the open loop sends gRPC (h2load) at a rate above 0, not "
                         f"{target.protocol!r} at {rate}/s")
    ensure("h2load")
    connections = max(1, math.ceil(rate / TICK_RPS))
    per = rate / connections
    opened = math.ceil(connections / max(1, int(1000 / per)))  # connections opened per ms
    with tempfile.TemporaryDirectory(prefix="tg-open-") as tmp:
        argv = _h2load_argv(target, Path(tmp), connections, OPEN_STREAMS)
        argv[-1:-1] = ["--rps", f"{per:.3f}", "-r", str(opened), "--rate-period", "1ms"]
        if warmup_s > 0:
            count = max(connections, round(rate * warmup_s))
            _run([*argv, "-n", str(count)], _limit(warmup_s))
        log = Path(tmp) / "requests.tsv"
        count = max(connections, round(rate * duration_s))
        ran = _run([*argv, "-n", str(count), "--log-file", str(log)], _limit(duration_s), meter)
        rows = _log(log)
    outcome = _parse_h2load(f"h2load -c {connections} --rps {per:.1f}", ran, rows,
                            target.answer_size, duration_s)
    first, last = (rows[:, 0].min(), rows[:, 0].max()) if len(rows) else (0, 0)
    if last > first:
        outcome.sent_per_s = (len(rows) - 1) / float(last - first) * 1e6
        # From the first send to the last answer: a server that falls behind stretches it.
        outcome.window_s = float((rows[:, 0] + rows[:, 2]).max() - first) / 1e6
    return outcome


def _numbers(pattern: str, text: str) -> list[int]:
    found = re.search(pattern, text)
    return [int(g) for g in found.groups()] if found else []


def _log(path: Path) -> np.ndarray:
    """h2load's --log-file: a row per request, (send time µs since the epoch, HTTP status or
    -1, latency µs)."""
    if not path.exists() or not path.stat().st_size:
        return np.zeros((0, 3), dtype=np.int64)
    return np.loadtxt(path, dtype=np.int64, ndmin=2)


def _parse_h2load(name: str, ran: _Ran, rows: np.ndarray, answer_size: int,
                  window_s: float) -> Outcome:
    counts = _numbers(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout", ran.stdout)
    data = _numbers(r"traffic: .*\((\d+)\) data", ran.stdout)
    if ran.returncode != 0 or not counts or not data:
        raise RuntimeError(f"h2load failed (exit {ran.returncode}):\n{ran.stdout[-3000:]}")
    succeeded, failed, errored, timeout = counts[3:]
    ok = rows[(rows[:, 1] >= 200) & (rows[:, 1] < 300)]
    # h2load counts HTTP statuses only; a gRPC error is a 200 with grpc-status in trailers and
    # no message. Every good answer carries answer_size bytes of DATA, so the missing bytes
    # count the errors (the first check call verified grpc-status and the answer itself).
    grpc_errors = max(0, succeeded - data[0] // answer_size) if answer_size else 0
    errors = failed + grpc_errors  # h2load's failed include those errored and timed out
    first = ""
    if grpc_errors:
        first = f"{grpc_errors} answers without a message (gRPC errors: grpc-status != 0)"
    elif errors:
        first = f"h2load: {failed} failed, {errored} errored, {timeout} timed out"
    return Outcome(name, max(0, succeeded - grpc_errors), window_s,
                   percentiles_ms(ok[:, 2] * 1000), errors, first,
                   ran.client_cpu_s, ran.server_cpu_s)


_WRK_SCRIPT = """\
local f = assert(io.open(%(body)s, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
%(headers)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("TG %%d %%d %%d %%d %%d %%d %%d", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
  for _, q in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format(" %%d", latency:percentile(q)))
  end
  io.write("\\n")
end
"""


def _wrk_seconds(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"  # wrk takes whole seconds


def _wrk(target: Target, load: Load, meter: Meter, tmp: Path) -> Outcome:
    body = tmp / "request.body"
    body.write_bytes(target.body)
    headers = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
                        for k, v in target.headers)
    script = tmp / "request.lua"
    script.write_text(_WRK_SCRIPT % {"body": json.dumps(str(body)), "headers": headers})
    threads = min(load.threads, load.concurrency)
    argv = ["wrk", "-t", str(threads), "-c", str(load.concurrency),
            "--timeout", f"{CALL_TIMEOUT_S:.0f}s",
            "-s", str(script), f"http://{target.address}{target.path}"]
    if load.warmup_s > 0:
        _run([*argv, "-d", _wrk_seconds(load.warmup_s)], _limit(load.warmup_s))
    window = _wrk_seconds(load.duration_s)
    ran = _run([*argv, "-d", window, "--latency"], _limit(load.duration_s), meter)
    found = re.search(r"^TG ([\d ]+)$", ran.stdout, re.MULTILINE)
    if ran.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed (exit {ran.returncode}):\n{ran.stdout[-3000:]}")
    requests, duration_us, *errs, p50, p90, p99, p999 = (int(v) for v in found.group(1).split())
    connect, read, write, status, timeout = errs
    errors = connect + read + write + status + timeout
    first = (f"wrk: {status} non-2xx/3xx answers, {timeout} timeouts, socket errors: connect "
             f"{connect}, read {read}, write {write}") if errors else ""
    lat = {"50": p50 / 1e3, "90": p90 / 1e3, "99": p99 / 1e3, "99.9": p999 / 1e3}
    return Outcome(f"wrk -t {threads} -c {load.concurrency}", max(0, requests - status),
                   duration_us / 1e6, lat, errors, first, ran.client_cpu_s, ran.server_cpu_s)
