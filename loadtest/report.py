"""The results of one benchmark run, and their rendering as ``loadtest/RESULTS.md``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtest.cases import BatchPoint
from loadtest.inturn import Turns
from loadtest.loadgen import Outcome
from loadtest.servers import Batching

FLOOR_GRPC = "do-nothing grpc.aio server (gRPC)"
FLOOR_HTTP = "do-nothing uvicorn app (HTTP JSON)"
RUNTIME = "runtime (gRPC)"
GW_GRPC = "gateway → runtime, gRPC"
GW_JSON = "gateway → runtime, HTTP JSON"
GW_BINARY = "gateway → runtime, HTTP binary"
FLOORS = {"grpc": FLOOR_GRPC, "http": FLOOR_HTTP}
#: The floor each gateway path is held against: the do-nothing server of its protocol.
FLOOR_OF = {GW_GRPC: FLOOR_GRPC, GW_JSON: FLOOR_HTTP, GW_BINARY: FLOOR_HTTP}
SERVERS = ("gateway", "runtime", "floor")


def cpu_per_1k(out: Outcome, name: str) -> float:
    """CPU seconds per 1,000 answered requests of one process ("client" or a server) over the
    measured run."""
    cpu = out.client_cpu_s if name == "client" else out.server_cpu_s.get(name, math.nan)
    return 1000 * cpu / out.answered if out.answered else math.nan


@dataclass
class Row:
    """One closed-loop run: a path to a model under ``concurrency`` callers."""

    model: str
    path: str
    protocol: str  # "grpc" or "http": which floor it is compared with
    concurrency: int
    outcome: Outcome
    rss_mib: dict[str, float] = field(default_factory=dict)
    #: The runtime's own statistics over the run (see servers.batching).
    batching: Batching | None = None

    def cpu_per_1k(self, name: str) -> float:
        return cpu_per_1k(self.outcome, name)


@dataclass
class OpenRow:
    model: str
    path: str
    fraction: float  # of the maximum rate
    max_rate: float
    outcome: Outcome

    def cpu_per_1k(self, name: str) -> float:
        return cpu_per_1k(self.outcome, name)


@dataclass
class Results:
    machine: dict[str, str]
    command: str
    threads: int
    gateway_processes: int = 1
    generators: list[str] = field(default_factory=list)
    sweeps: dict[str, list[BatchPoint]] = field(default_factory=dict)
    queue_delay_us: dict[str, int] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    open_rows: list[OpenRow] = field(default_factory=list)
    #: requests/s per round of each path of loadtest.policy_bench (empty: not run).
    policy: dict[str, list[float]] = field(default_factory=dict)
    #: requests/s per round of each floor and the gateway path held against it, run in turn
    #: (digits, --concurrency callers; empty: not run).
    alternating: dict[str, list[float]] = field(default_factory=dict)
    #: Per compute-heavy model: its in-process ceiling (first) and gateway paths, in turn.
    ceiling_turns: dict[str, Turns] = field(default_factory=dict)
    #: digits through the runtime and through the gateway, one caller each, in turn.
    latency_turns: Turns | None = None
    #: Anything wrong that did not stop the run, e.g. a server that did not exit cleanly.
    problems: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def find(self, model: str, path: str, concurrency: int) -> Row | None:
        for row in self.rows:
            if (row.model, row.path, row.concurrency) == (model, path, concurrency):
                return row
        return None

    def ceiling(self, model: str) -> BatchPoint | None:
        sweep = self.sweeps.get(model)
        return max(sweep, key=lambda p: p.rows_per_s) if sweep else None


HEADER = """\
Every row is one measurement on this machine, in one run, with the load generator on the same
cores. **in-process** rows call the ONNX Runtime backend inside the benchmark process with the
runtime's thread budget: the *ceiling* is its best rows/s over batch sizes 1-64, as one session
with every thread or as one single-thread session per thread called side by side (the runtime's
`instance_count`; its latencies are those of one batch call); *batch 1* is one row alone. The
bench's `digits` is the shipped version 1 with `max_queue_delay_microseconds: 0`. **runtime
(gRPC)** is a `tensorgate runtime` worker called directly; **gateway → runtime** rows are the
full path, `tensorgate gateway` (gRPC, HTTP with JSON tensors, or HTTP with Triton's binary
tensor extension) forwarding over the lane to that same worker (a unix socket, as `tensorgate
serve` connects its workers). The **do-nothing** servers
answer a fixed infer response: a `grpc.aio` server (generic handler, bytes in and out) and a
bare ASGI app on uvicorn with httptools and uvloop (reads the body, parses its JSON with
orjson), both with the gateway's garbage-collector threshold and as many processes as the
gateway (sharing one port, as `--gateway-processes` shares the gateway's). They are the floors:
what a Python server of that many processes on these cores can answer these clients at all.

Closed-loop rows: *concurrency* callers, each sending its next one-row request as soon as the
previous one is answered; latencies are measured by the load generator (see *Load generators*).
*÷ ceiling* is requests/s ÷ ceiling rows/s; *÷ floor* is requests/s ÷ the matching floor's
(gRPC rows ÷ the gRPC floor, HTTP rows ÷ the HTTP floor) at the same concurrency. *CPU s/1k* is a
process's user + system CPU seconds over the measured window per 1,000 answered requests (all its
processes and threads); the load generator's is apart in *client*. *RSS* is VmRSS after the run.
A compute-heavy model (its best batch takes 1 ms or more in-process) also runs with enough
callers to fill its batches: twice its `instance_count` times its `max_batch_size`, a full batch
running on every instance and the next one queued (64 callers cannot fill two instances'
batches of 64); over gRPC and HTTP binary, not JSON.
"""


def _table(header: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    align = ["---" if i < left else "---:" for i in range(len(header))]
    return [f"| {' | '.join(cells)} |" for cells in (header, align, *rows)]


def _num(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _row_cells(results: Results, r: Row) -> list[str]:
    best = results.ceiling(r.model)
    floor = results.find("-", FLOORS[r.protocol], r.concurrency)
    out = r.outcome
    cpu = [_num(r.cpu_per_1k(n), 3) if n in out.server_cpu_s else "-" for n in SERVERS]
    rss = [_num(r.rss_mib[n], 0) if n in r.rss_mib else "-" for n in ("gateway", "runtime")]
    return [r.model, r.path, out.generator, str(r.concurrency), f"{out.rate:.0f}",
            _num(out.p("50")), _num(out.p("99")),
            _ratio(out.rate / best.rows_per_s) if best else "-",
            _ratio(out.rate / floor.outcome.rate) if floor and r.model != "-" else "-",
            *cpu, _num(r.cpu_per_1k("client"), 3), *rss, str(out.errors)]


def _main_table(results: Results) -> list[str]:
    rows = [_row_cells(results, r) for r in results.rows if r.model == "-"]
    blank = ["-"] * 7
    for model, sweep in results.sweeps.items():
        best, one = max(sweep, key=lambda p: p.rows_per_s), sweep[0]
        rows.append([model, f"in-process ceiling ({best.layout})", "-", "-",
                     f"{best.rows_per_s:.0f} rows/s", _num(best.p50_ms), _num(best.p99_ms), "1",
                     *blank])
        rows.append([model, "in-process, batch 1", "-", "1", f"{one.rows_per_s:.0f}",
                     _num(one.p50_ms), _num(one.p99_ms), _ratio(one.rows_per_s / best.rows_per_s),
                     *blank])
        rows += [_row_cells(results, r) for r in results.rows if r.model == model]
    return _table(["model", "path", "generator", "concurrency", "requests/s", "p50 ms", "p99 ms",
                   "÷ ceiling", "÷ floor", "gateway CPU s/1k", "runtime CPU s/1k",
                   "floor CPU s/1k", "client CPU s/1k", "gateway RSS MiB", "runtime RSS MiB",
                   "errors"], rows)


def _open_table(results: Results) -> list[str]:
    rows = []
    for r in results.open_rows:
        out = r.outcome
        rows.append([r.model, r.path, out.generator,
                     f"{100 * r.fraction:.0f} % of {r.max_rate:.0f}",
                     f"{r.fraction * r.max_rate:.0f}", _num(out.sent_per_s, 0),
                     f"{out.rate:.0f}",
                     *(_num(out.p(q)) for q in ("50", "90", "99", "99.9")), str(out.errors),
                     *(_num(r.cpu_per_1k(n)) for n in ("gateway", "runtime", "client"))])
    return _table(["model", "path", "generator", "rate", "asked/s", "sent/s", "answered/s",
                   "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors", "gateway CPU s/1k",
                   "runtime CPU s/1k", "client CPU s/1k"], rows)


def _us(value: float) -> str:
    return _num(1000 * value, 0)


def _added_latency(results: Results) -> list[str]:
    floors = [results.find("-", path, 1) for path in (FLOOR_GRPC, FLOOR_HTTP)]
    hops = [_us(f.outcome.p("50")) if f else "-" for f in floors]
    rows = []
    for model, sweep in results.sweeps.items():
        runtime = results.find(model, RUNTIME, 1)
        if runtime is None:
            continue
        p50 = runtime.outcome.p("50")
        gateways = [results.find(model, path, 1) for path in (GW_GRPC, GW_JSON, GW_BINARY)]
        added = [_us(g.outcome.p("50") - p50) if g else "-" for g in gateways]
        delay = results.queue_delay_us[model]
        to_runtime = 1000 * (p50 - sweep[0].p50_ms)
        beyond_hop = _us(p50 - floors[0].outcome.p("50")) if floors[0] else "-"
        rows.append([model, *added, _num(to_runtime, 0), str(delay),
                     _num(to_runtime - delay, 0), beyond_hop, *hops])
    return _table(["model", "gateway gRPC - runtime", "gateway HTTP JSON - runtime",
                   "gateway HTTP binary - runtime", "runtime - in-process batch 1",
                   "of which max_queue_delay", "the rest", "runtime - do-nothing gRPC server",
                   "do-nothing gRPC server p50", "do-nothing HTTP server p50"], rows, left=1)


def _latency_turns(turns: Turns) -> list[str]:
    """Each path's p50 per round at one caller, the median, and the median less the first's."""
    medians = {name: statistics.median(values) for name, values in turns.p50_ms.items()}
    first = medians[next(iter(medians))]
    rows = [[name, *(_us(v) for v in values), _us(medians[name]), _us(medians[name] - first)]
            for name, values in turns.p50_ms.items()]
    rounds = len(next(iter(turns.p50_ms.values())))
    return _table(["digits, one caller", *(f"round {i + 1} p50 µs" for i in range(rounds)),
                   "median", "- runtime"], rows, left=1)


def _batching(results: Results) -> list[str]:
    rows = [[r.model, r.path, str(r.concurrency), str(b[0]), _num(b[1], 1), _num(b[2], 0),
             _num(b[3], 0), str(b[4])] for r in results.rows if (b := r.batching) is not None]
    return _table(["model", "path", "concurrency", "batches", "rows per batch",
                   "queue µs per request", "compute µs per batch", "failed"], rows)


def _sweep(results: Results) -> list[str]:
    rows = [[model, str(p.instances), str(p.batch), f"{p.rows_per_s:.0f}", _num(p.p50_ms),
             _num(p.p99_ms)] for model, sweep in results.sweeps.items() for p in sweep]
    return _table(["model", "sessions side by side", "batch", "rows/s", "p50 ms per call",
                   "p99 ms per call"], rows, left=1)


OPEN_LOOP = """\
Requests sent at a fixed rate (a fraction of the gateway's gRPC requests/s at the highest
concurrency above, measured in this run) whatever the answers do: h2load `--rps` over
connections of at most 100 requests/s each, so each connection's pacing timer sends one request
per tick, the connections opened a few per ms across one tick so their sends interleave. A send
never waits for an answer (up to 256 in flight per connection), so a stalled server shows in the
latency instead of lowering the load (no coordinated omission); latency runs from the actual
send, which h2load's timers (1 ms resolution) make late by about a millisecond at most. *sent/s*
is from h2load's logged send times; *answered/s* counts from the first send to the last answer,
so a server that falls behind shows below *asked/s*.
"""


POLICY = ("digits over gRPC (h2load, 64 callers), through two gateways in front of one runtime "
          "worker whose digits versions 1 and 2 are the same ONNX model: one with `--no-auth`, "
          "one with an API key under a rate, burst and concurrency quota (never reached) and a "
          "90/10 traffic split. Runs alternate between them (`python -m loadtest.policy_bench`).")


ALTERNATING = (
    "digits at the loaded runs' concurrency: each do-nothing server and the gateway path held "
    "against it (gRPC against gRPC, HTTP binary against the HTTP floor) run one after the other, "
    "round after round, all servers up throughout, so a drift of the machine touches both sides "
    "of a ratio alike. *÷ floor* is the path's median ÷ its floor's median.")


CEILING_TURNS = (
    "A compute-heavy model at the loaded runs' concurrency: its in-process ceiling (the best "
    "layout and batch size of the sweep, back-to-back calls; rows/s) and the gateway path over "
    "gRPC and HTTP binary (requests/s of one row each) run one after the other, round after "
    "round, so a drift of the machine touches both sides of the ratio alike (issue 3, target 2: "
    "÷ ceiling ≥ 0.9 with p99 under 4 times the ceiling's batch time, its p50 per call).")


def _rounds(first: str, rates: dict[str, list[float]], base: Callable[[str], str],
            ratio: str, extra: dict[str, list[str]] | None = None, unit: str = "req/s"
            ) -> list[str]:
    """Paths run in turn, round after round: each round, the median, the median ÷ that of the
    path `base` names, and any `extra` columns (header: one cell per path)."""
    medians = {name: statistics.median(values) for name, values in rates.items()}
    extra = extra or {}
    rows = []
    for i, (name, values) in enumerate(rates.items()):
        against = medians.get(base(name), 0.0)
        rows.append([name, *(_num(value, 0) for value in values), _num(medians[name], 0),
                     _ratio(medians[name] / against) if against else "n/a",
                     *(cells[i] for cells in extra.values())])
    rounds = len(next(iter(rates.values())))
    return _table([first, *(f"round {i + 1} {unit}" for i in range(rounds)), "median", ratio,
                   *extra], rows, left=1)


def _ceiling_turns(model: str, turns: Turns) -> list[str]:
    """Target 2: the gateway paths ÷ the ceiling, and their p99 ÷ the ceiling's batch time."""
    ceiling = next(iter(turns.rates))
    batch_ms = statistics.median(turns.p50_ms[ceiling])
    p99 = {name: statistics.median(values) for name, values in turns.p99_ms.items()}
    extra = {"p99 ms (median)": [_num(p99[name], 1) for name in turns.rates],
             "p99 ÷ batch time": ["-" if name == ceiling else _ratio(p99[name] / batch_ms)
                                  for name in turns.rates]}
    return _rounds(f"{model}: path", turns.rates, lambda _: ceiling, "÷ ceiling", extra,
                   "rows/s")


def render(results: Results) -> str:
    lines = ["# Benchmark results", "", HEADER, f"Command: `{results.command}` "
             f"(took {results.elapsed_s:.0f} s; gateway processes: "
             f"{results.gateway_processes})", ""]
    lines += [f"- {key}: {value}" for key, value in results.machine.items()]
    lines += ["", "## Load generators", "", *(f"- {g}" for g in results.generators), ""]
    lines += ["## Throughput, latency and cost (closed loop)", "", *_main_table(results), ""]
    if results.alternating:
        lines += ["## Per-request cost: floors and gateway path in turn", "", ALTERNATING, "",
                  *_rounds("path", results.alternating, lambda name: FLOOR_OF.get(name, name),
                           "÷ floor"), ""]
    for model, turns in results.ceiling_turns.items():
        lines += [f"## Batching efficiency: {model}'s ceiling and gateway path in turn", "",
                  CEILING_TURNS, "", *_ceiling_turns(model, turns), ""]
    if results.open_rows:
        lines += ["## Open loop (fixed rate)", "", OPEN_LOOP, *_open_table(results), ""]
    lines += ["## Added latency at concurrency 1 (p50 differences, µs)", "",
              "The runtime's dynamic batcher holds a lone request for the model's "
              "`max_queue_delay_microseconds` before running it (Triton's rule), so that delay "
              "is part of *runtime - in-process*. The last columns are whole round trips to the "
              "do-nothing servers at concurrency 1: what one gRPC or HTTP hop costs here. The "
              "HTTP columns set an HTTP path against the runtime reached over gRPC, so they can be "
              "negative where the gateway's HTTP stack plus the lane costs less than a grpcio "
              "hop.", "",
              *_added_latency(results), ""]
    if results.latency_turns is not None:
        lines += ["The runtime over gRPC and the gateway in front of it, run in turn, round "
                  "after round (the rows above are runs minutes apart):", "",
                  *_latency_turns(results.latency_turns), ""]
    lines += ["## What the runtime's batcher did (its statistics over each run)", "",
              *_batching(results), ""]
    lines += [f"## Ceiling sweep (in-process, {results.threads} threads)", "",
              *_sweep(results), ""]
    if results.policy:
        first = next(iter(results.policy))
        lines += ["## Policy on the hot path", "", POLICY, "",
                  *_rounds("gateway", results.policy, lambda _: first, "÷ no policy"), ""]
    failed = [r for r in results.rows if r.outcome.errors]
    failed_open = [r for r in results.open_rows if r.outcome.errors]
    if failed or failed_open or results.problems:
        lines += ["## Errors", ""]
        lines += [f"- {r.model} {r.path} c{r.concurrency}: {r.outcome.errors} errors, first: "
                  f"`{r.outcome.first_error}`" for r in failed]
        lines += [f"- open loop {r.model} {r.path} at {100 * r.fraction:.0f} %: "
                  f"{r.outcome.errors} errors, first: `{r.outcome.first_error}`"
                  for r in failed_open]
        lines += [f"- {problem}" for problem in results.problems]
        lines.append("")
    return "\n".join(lines)
