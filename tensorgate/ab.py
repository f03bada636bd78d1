"""`tensorgate ab report MODEL`: compare a model's versions on live traffic and feedback.

Reads `answers.db` beside the registry; the statistics are in `tensorgate.abstats`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.names import is_version
from common.registry import Registry, RegistryError, default_registry_path
from common.registry.versions import PRODUCTION, Lifecycle
from gateway.answer_store import VALUE, AnswerStore, answers_path
from tensorgate import abplot, abstats
from tensorgate.admin import registry_options, table, when

COMMANDS = ("ab",)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
PLOT_MISSING = ("tensorgate: --plot needs matplotlib, an optional extra: "
                "pip install 'tensorgate[plot]'")


def duration(text: str) -> float | None:
    """Seconds from `90`, `30s`, `15m`, `1h`, `7d`, `2w`; `all`: None (no limit)."""
    if text == "all":
        return None
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 1h or 7d, or 'all', "
                                         f"got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ab = commands.add_parser("ab", help="compare a model's versions on live traffic and feedback")
    sub = ab.add_subparsers(dest="ab_command", required=True)
    report = sub.add_parser("report", parents=[registry_options()],
                            help="per version: requests, errors, latency, online accuracy, "
                                 "significance and a recommendation")
    report.add_argument("model")
    report.add_argument("--since", type=duration, default=3600.0, metavar="DURATION",
                        help="answers from this far back: 30m, 1h, 7d, or 'all' (1h)")
    report.add_argument("--baseline", metavar="VERSION",
                        help="the version the others are compared with (the production alias, "
                             "else the version with the most requests)")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="draw latency distributions and accuracy intervals (matplotlib)")


@dataclass
class Report:
    """The report as printed or dumped (`summary`), and the samples a plot needs."""

    summary: dict[str, Any]
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)


def _latency(sorted_ms: Sequence[float]) -> dict[str, float]:
    return {f"p{q}": round(abstats.percentile(sorted_ms, q), 3) for q in (50, 95, 99)}


def _arm(requests: int, errors: int, pairs: Sequence[tuple[float, float]], kind: int | None
         ) -> abstats.Arm:
    if kind == VALUE:
        return abstats.Arm(requests, errors, len(pairs),
                           errors_abs=abstats.Moments.of([abs(p - t) for p, t in pairs]))
    hits = sum(1 for predicted, truth in pairs if abs(predicted - truth) < 1e-9)
    return abstats.Arm(requests, errors, len(pairs), hits=hits)


def _version_summary(version: str, arm: abstats.Arm, latencies: Sequence[float],
                     kind: int | None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "version": version, "requests": arm.requests, "errors": arm.errors,
        "error_rate": arm.errors / arm.requests if arm.requests else None,
        "error_rate_ci": list(abstats.wilson(arm.errors, arm.requests)),
        "latency_ms": _latency(latencies), "labelled": arm.labelled,
    }
    if kind == VALUE and arm.errors_abs is not None and arm.labelled:
        summary["mae"] = arm.errors_abs.mean
        summary["mae_ci"] = list(arm.errors_abs.interval())
    elif arm.labelled:
        summary["accuracy"] = arm.hits / arm.labelled
        summary["accuracy_ci"] = list(abstats.wilson(arm.hits, arm.labelled))
    return summary


def _comparison(version: str, base: str, arms: dict[str, abstats.Arm]) -> dict[str, Any]:
    b, c = arms[base], arms[version]
    _, error_p = abstats.two_proportion_z(b.errors, b.requests, c.errors, c.requests)
    verdict, reason = abstats.recommend(b, c)
    compared: dict[str, Any] = {"version": version, "baseline": base, "error_rate_p": error_p,
                                "recommendation": verdict, "reason": reason}
    both = bool(b.labelled and c.labelled)
    if b.errors_abs is not None and c.errors_abs is not None:
        compared["mae_diff"] = c.errors_abs.mean - b.errors_abs.mean if both else None
        compared["mae_p"] = abstats.welch_z(b.errors_abs, c.errors_abs)[1]
    else:
        compared["accuracy_diff"] = c.hits / c.labelled - b.hits / b.labelled if both else None
        compared["accuracy_p"] = abstats.two_proportion_z(b.hits, b.labelled, c.hits,
                                                          c.labelled)[1]
    return compared


def build_report(model: str, outcomes: Sequence[tuple[str, str, float]],
                 labelled: Sequence[tuple[str, int, float, float]],
                 baseline: str | None = None) -> Report:
    """The report from the store's rows: outcomes (version, code, latency_s) and labelled
    answers (version, kind, predicted, truth). The baseline defaults to the busiest version."""
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for version, code, latency_s in outcomes:
        latencies[version].append(latency_s * 1000)
        errors[version] += code != "OK"
    kinds = [kind for _, kind, _, _ in labelled]
    # NOTE: one kind per model: its outputs' shape decides, so a mix means a changed signature;
    # the majority's metric is the one that compares most answers.
    kind = max(set(kinds), key=kinds.count) if kinds else None
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for version, row_kind, predicted, truth in labelled:
        if row_kind == kind:
            pairs[version].append((predicted, truth))
    versions = sorted(latencies, key=_version_key)
    arms = {v: _arm(len(latencies[v]), errors[v], pairs[v], kind) for v in versions}
    if baseline not in arms:
        baseline = max(versions, key=lambda v: arms[v].requests) if versions else None
    for samples in latencies.values():
        samples.sort()
    summary = {
        "model": model, "metric": "mae" if kind == VALUE else "accuracy",
        "baseline": baseline,
        "versions": [_version_summary(v, arms[v], latencies[v], kind) for v in versions],
        "comparisons": [_comparison(v, baseline, arms) for v in versions
                        if baseline is not None and v != baseline],
        "rule": abstats.RULE,
    }
    return Report(summary, dict(latencies))


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if is_version(version) else (1, version)


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _quality(v: dict[str, Any]) -> str:
    if "accuracy" in v:
        lo, hi = v["accuracy_ci"]
        return f"{_pct(v['accuracy'])} [{_pct(lo)}, {_pct(hi)}]"
    if "mae" in v:
        lo, hi = v["mae_ci"]
        return f"{v['mae']:.4g} [{lo:.4g}, {hi:.4g}]"
    return "-"


def render(report: Report, since: float | None, now: float) -> str:
    """The report as text: a table of versions, then one line per comparison, then the rule."""
    s = report.summary
    metric = "ACCURACY [95% CI]" if s["metric"] == "accuracy" else "MAE [95% CI]"
    rows = [["VERSION", "REQUESTS", "ERRORS", "P50 MS", "P95 MS", "P99 MS", "FEEDBACK", metric]]
    for v in s["versions"]:
        lat = v["latency_ms"]
        name = v["version"] or "(latest)"  # failed on the runtime's default version
        rows.append([name + (" (baseline)" if v["version"] == s["baseline"] else ""),
                     str(v["requests"]), _pct(v["error_rate"]), f"{lat['p50']:.3g}",
                     f"{lat['p95']:.3g}", f"{lat['p99']:.3g}", str(v["labelled"]),
                     _quality(v)])
    window = "all answers" if since is None else f"answers since {when(now - since)}"
    lines = [f"model {s['model']}: {window}", "", table(rows), ""]
    for c in s["comparisons"]:
        metric_p = c.get("accuracy_p", c.get("mae_p"))
        lines.append(f"version {c['version']} vs {c['baseline']}: {c['recommendation']}: "
                     f"{c['reason']} (p-values: {s['metric']} {metric_p:.3g}, "
                     f"error rate {c['error_rate_p']:.3g})")
    lines.append(f"rule: {s['rule']}")
    return "\n".join(lines)


def _production(registry_path: Path, model: str) -> str | None:
    """The version the production alias points at, if the registry exists and has one."""
    if not registry_path.is_file():
        return None
    try:
        with Registry(registry_path) as registry:
            return Lifecycle(registry).aliases(model).get(PRODUCTION)
    except RegistryError:
        return None


def run(args: argparse.Namespace) -> int:
    if args.plot is not None and not abplot.available():
        print(PLOT_MISSING, file=sys.stderr)
        return 2
    registry_path = args.registry or default_registry_path(args.model_repository)
    now = time.time()
    start = 0.0 if args.since is None else now - args.since
    try:
        with AnswerStore(answers_path(registry_path), create=False) as store:
            outcomes = store.outcomes(args.model, start)
            labelled = store.labelled(args.model, start)
    except FileNotFoundError as exc:
        print(f"tensorgate: {exc}", file=sys.stderr)
        return 2
    if not outcomes:
        print(f"tensorgate: no answers of model '{args.model}' in this window; try --since all",
              file=sys.stderr)
        return 1
    report = build_report(args.model, outcomes, labelled,
                          args.baseline or _production(registry_path, args.model))
    if args.json:
        print(json.dumps(_finite(report.summary), indent=2))
    else:
        print(render(report, args.since, now))
    if args.plot is not None:
        abplot.draw(report.summary, report.latencies_ms, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
