"""gpu_bench's report: the device alone, the in-process ceiling and every served row in one
Markdown table, each divided by the ceiling and by the device alone."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

from loadtest.cases import BatchPoint
from loadtest.loadgen import Outcome
from loadtest.servers import Batching

COLUMNS = ("workers x instances", "path", "generator", "rows/s", "÷ ceiling", "÷ device alone",
           "p50 ms", "p99 ms", "p99 ÷ batch time", "mean batch",
           "batch: inputs gathered ms", "run ms", "cores busy: gateways", "busiest gateway",
           "runtimes", "first runtime's event loop", "its busiest other thread",
           "GPU busy %", "errors")


@dataclass
class Row:
    """One served path of one layout: its outcome, or ``note`` saying why there is none."""

    layout: str
    path: str
    outcome: Outcome | None = None
    stats: Batching | None = None
    #: Cores: the first runtime's event loop, its busiest other thread, the busiest gateway.
    busy: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    #: Mean GPU utilisation over the run (NVML), None where it could not be read.
    gpu: float | None = None
    note: str = ""

    @property
    def errors(self) -> int:
        return self.outcome.errors if self.outcome is not None else 0


def cell(text: str) -> str:
    """Text for a table cell: no pipes or line breaks, bounded."""
    flat = " ".join(text.replace("|", "/").split())
    return flat if len(flat) <= 300 else flat[:297] + "..."


def served_line(row: Row, rows_per_request: int, best: BatchPoint, alone: BatchPoint) -> str:
    o = row.outcome
    if o is None:
        return (f"| {row.layout} | {row.path} | {cell(row.note)} |"
                + " - |" * (len(COLUMNS) - 3))
    stats = row.stats
    batches = (f"{stats[1]:.1f} | {stats[5] / 1e3:.2f} | {stats[3] / 1e3:.2f}" if stats
               else "- | - | -")
    loop, other, gateway = row.busy
    rate = o.rate * rows_per_request
    gpu = f"{row.gpu:.0f}" if row.gpu is not None else "-"
    floor = row.layout == "-"  # NOTE: a do-nothing server: its own CPU in the gateway columns
    gateways = gateway if floor else o.cores("gateway")
    runtimes = "-" if floor else f"{o.cores('runtime'):.1f}"
    return (f"| {row.layout} | {row.path} | {o.generator} | {rate:.0f} | "
            f"{rate / best.rows_per_s:.2f} | {rate / alone.rows_per_s:.2f} | "
            f"{o.p('50'):.1f} | {o.p('99'):.1f} | {o.p('99') / best.p50_ms:.1f} | {batches} | "
            f"{gateways:.1f} | {gateway:.2f} | {runtimes} | {_cores(loop)} | {_cores(other)} | "
            f"{gpu} | {o.errors} |")


def _cores(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def render(opts: argparse.Namespace, facts: dict[str, str], points: list[BatchPoint],
           alone: BatchPoint, rows: list[Row], against_floors: Sequence[str] = ()) -> str:
    best = max(points, key=lambda p: p.rows_per_s)
    backend = {"onnx": "OnnxBackend", "torch": "TorchBackend"}[opts.backend]
    lines = [f"# GPU: {opts.model} through the gateway against its in-process ceiling "
             "(issue 3, target 6)", "", f"Command: `python -m loadtest.gpu_bench "
             f"{' '.join(opts.argv)}`", ""] + [f"- {k}: {v}" for k, v in facts.items()]
    lines += ["", f"Alone on the device (the same weights in PyTorch, input already there, "
              f"channels_last and cuDNN's autotuner on a GPU): {alone.rows_per_s:.0f} rows/s "
              f"(batch {alone.batch}, {alone.p50_ms:.2f} ms per batch)."]
    lines += ["", f"In-process (`{backend}`, as the runtime builds it, back-to-back calls):", "",
              "| layout | rows/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {p.layout} | {p.rows_per_s:.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} |"
              for p in points]
    lines += ["", f"Ceiling: {best.rows_per_s:.0f} rows/s ({best.layout}, {best.p50_ms:.2f} ms "
              f"per batch), {best.rows_per_s / alone.rows_per_s:.2f} times the device alone.", "",
              f"Served, {opts.rows} image{'s' if opts.rows > 1 else ''} per "
              f"request, {opts.concurrency} closed-loop callers (p99 ÷ batch time: the "
              f"ceiling's {best.p50_ms:.2f} ms):", "",
              "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += [served_line(row, opts.rows, best, alone) for row in rows]
    if any(row.layout == "-" for row in rows):
        lines += ["", "Rows of layout `-` are do-nothing servers (loadtest/floors.py) fed the same "
                  "requests by the same generators, their own CPU in the gateway columns, of "
                  f"as many processes as the gateway's ({opts.gateway_processes}): what a Python "
                  "server carries for requests of this size."]
    if against_floors:
        lines += ["", "Served ÷ the do-nothing server of its protocol:", "", *against_floors]
    return "\n".join(lines) + "\n"
