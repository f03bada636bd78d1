"""How `tensorgate models list` and `describe` print: tables one line a row, summaries short.

Any text a registry row holds (a failure reason, notes, an actor) is made one line and cut, so
no row can break the table; `describe --json` keeps everything.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from common.registry import Registry
from common.registry.store import AuditEntry
from common.registry.versions import Lifecycle, VersionRecord
from tensorgate.admin import table, when

#: The fewest characters a cut column keeps, however narrow the terminal.
MIN_CUT = 24
#: Changes `describe` shows without --json (newest first).
RECENT = 10
#: Changes `describe --json` carries.
HISTORY_LIMIT = 1000


def one_line(text: object, limit: int | None = None) -> str:
    """`text` on one line (any run of white space, newlines too, made one space), cut with '…'
    to `limit` characters."""
    flat = " ".join(str(text).split())
    if limit is None or len(flat) <= limit:
        return flat
    return flat[:max(limit - 1, 0)] + "…"


def width() -> int:
    """The terminal's width; 120 when the output is not a terminal (a pipe, a file)."""
    return shutil.get_terminal_size((120, 24)).columns


def version_table(lifecycle: Lifecycle, records: list[VersionRecord], columns: int) -> str:
    """`models list`: one line per version; a state's reason is cut to fit `columns`."""
    head = ["MODEL", "VERSION", "STATE", "ALIASES", "BACKEND", "SIZE", "CREATED", "BY"]
    rows, states = [], []
    aliases: dict[str, dict[str, str]] = {}
    for r in records:
        named = aliases.setdefault(r.model, lifecycle.aliases(r.model))
        here = ",".join(a for a, v in named.items() if v == r.version) or "-"
        rows.append([one_line(r.model, 64), one_line(r.version, 24), "", one_line(here, 40),
                     one_line(r.backend, 16), str(r.size), when(r.created_at),
                     one_line(r.created_by, 32)])
        states.append(r.state if not r.reason else f"{r.state} ({one_line(r.reason)})")
    others = sum(max(len(row[i]) for row in [head, *rows]) + 2 for i in range(len(head)) if i != 2)
    room = max(MIN_CUT, columns - others)
    for row, state in zip(rows, states):
        row[2] = one_line(state, room)
    return table([head, *rows])


def describe_text(registry: Registry, lifecycle: Lifecycle, model: str, version: str,
                  records: list[VersionRecord], columns: int) -> str:
    """`models describe`: each version's facts, then the last RECENT changes, one line each."""
    share = _shares(registry, model)
    aliases = lifecycle.aliases(model)
    lines = [f"model:   {model}",
             "aliases: " + (", ".join(f"{a}={v}" for a, v in aliases.items()) or "none")]
    for r in records:
        lines += [f"version {r.version}: {r.state}, {r.backend}, {r.size} bytes, sha256 "
                  f"{r.sha256[:12]}…, {share.get(r.version, 0.0):.4g}% of traffic",
                  f"  created {when(r.created_at)} by {one_line(r.created_by, 32)}",
                  f"  inputs:  {_specs(r.signature.get('inputs'))}",
                  f"  outputs: {_specs(r.signature.get('outputs'))}"]
        if r.notes:
            lines.append(f"  notes:   {one_line(r.notes, columns - 11)}")
        if r.reason:  # in full: this is where the table's cut reason can be read
            lines.append(f"  reason:  {one_line(r.reason)}")
    history = _history(registry, model, version, RECENT + 1)
    lines.append(f"recent changes (newest first; --json for all {HISTORY_LIMIT} latest):"
                 if len(history) > RECENT else "changes (newest first):")
    lines += [one_line(f"  {when(e.at)}  {e.actor}  {e.action} {e.target}: "
                       f"{_brief(e.before)} -> {_brief(e.after)}", columns)
              for e in history[:RECENT]] or ["  none"]
    return "\n".join(lines)


def describe_json(registry: Registry, lifecycle: Lifecycle, model: str, version: str,
                  records: list[VersionRecord]) -> str:
    """`models describe --json`: everything, with up to HISTORY_LIMIT changes."""
    share = _shares(registry, model)
    described = {
        "model": model, "aliases": lifecycle.aliases(model),
        "versions": [{**r.summary(), "signature": r.signature,
                      "traffic_percent": share.get(r.version, 0.0)} for r in records],
        "history": [{"at": when(e.at), "actor": e.actor, "action": e.action,
                     "target": e.target, "before": e.before, "after": e.after}
                    for e in _history(registry, model, version, HISTORY_LIMIT)],
    }
    return json.dumps(described, indent=2, sort_keys=True, default=str)


def _shares(registry: Registry, model: str) -> dict[str, float]:
    policy = registry.get_traffic(model)
    total = sum(w for _, w in policy.weights) if policy else 0
    return {v: 100.0 * w / total for v, w in policy.weights} if policy and total else {}


def _history(registry: Registry, model: str, version: str, limit: int) -> list[AuditEntry]:
    target = f"{model}:{version}"
    return [e for e in registry.audit_log(model=model, limit=limit)
            if not version or e.target in (model, target) or e.target.startswith(f"{model}:")]


def _specs(tensors: Any) -> str:
    return ", ".join(f"{t.get('name')} {t.get('datatype')} {t.get('shape')}"
                     for t in tensors or ()) or "-"


def _brief(value: Any) -> str:
    """A before/after value in a few words: JSON on one line, cut."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return one_line(text, 60)
