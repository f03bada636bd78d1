"""The A/B report's picture: latency distributions and accuracy (or MAE) intervals, side by side.

matplotlib is an optional extra (`pip install 'tensorgate[plot]'`), imported only here, on use.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _latency_panel(axes: Any, latencies_ms: Mapping[str, Sequence[float]],
                   baseline: str | None) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    samples = [s for s in latencies_ms.values() if s]
    low = max(min(s[0] for s in samples), 1e-3) if samples else 1e-3
    high = max(max(s[-1] for s in samples), low * 10) if samples else 1.0
    # NOTE: log-spaced bins: latencies span decades, and a linear axis hides the tail.
    bins = [low * (high / low) ** (i / 60) for i in range(61)]
    for version, values in latencies_ms.items():
        # NOTE: weights, not density: on log bins a density per ms would squash the tail.
        axes.hist(values, bins=bins, weights=[1 / len(values)] * len(values), histtype="step",
                  linewidth=1.5, label=f"version {version or '(latest)'}"
                  f"{' (baseline)' if version == baseline else ''}, n={len(values)}")
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("share of requests")
    axes.set_title("latency by version")
    axes.legend(loc="upper right", fontsize="small")


def _quality_panel(axes: Any, summary: Mapping[str, Any]) -> None:
    key = "accuracy" if summary["metric"] == "accuracy" else "mae"
    shown = [v for v in summary["versions"] if key in v]
    if not shown:
        axes.text(0.5, 0.5, "no feedback yet", ha="center", va="center")
        axes.set_axis_off()
        return
    x = list(range(len(shown)))
    y = [v[key] for v in shown]
    lows = [v[key] - v[f"{key}_ci"][0] for v in shown]
    highs = [v[f"{key}_ci"][1] - v[key] for v in shown]
    axes.errorbar(x, y, yerr=[lows, highs], fmt="o", capsize=6)
    axes.set_xticks(x, [f"{v['version']}\n(n={v['labelled']})" for v in shown])
    axes.set_xlim(-0.5, len(shown) - 0.5)
    axes.set_ylabel("accuracy" if key == "accuracy" else "mean absolute error")
    axes.set_title(f"{'accuracy' if key == 'accuracy' else 'MAE'} with 95 % interval")


def draw(summary: Mapping[str, Any], latencies_ms: Mapping[str, Sequence[float]],
         path: Path) -> None:
    """Write the two panels to an image file (its suffix picks the format)."""
    import matplotlib

    matplotlib.use("Agg")  # NOTE: no display needed; the CLI may run on a headless host
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    try:
        order = [v["version"] for v in summary["versions"]]
        _latency_panel(left, {v: latencies_ms[v] for v in order if v in latencies_ms},
                       summary["baseline"])
        _quality_panel(right, summary)
        figure.suptitle(f"model {summary['model']}: baseline version {summary['baseline']}")
        figure.tight_layout()
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
