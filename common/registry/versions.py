"""Model versions and their aliases in the registry: register, change state, promote, roll back.

Each change is one registry transaction with its audit row; artifacts on disk are not touched here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

from common.names import is_name, is_version, rule, shown
from common.registry.store import Registry, RegistryError

STATES = ("validating", "ready", "failed", "retired")
PRODUCTION = "production"
_COLUMNS = ("model, version, sha256, size, backend, signature, created_by, created_at, notes, "
            "state, reason")


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: str
    sha256: str
    size: int
    backend: str
    signature: dict[str, Any]  # {"inputs": [...], "outputs": [...]}, as the config declares
    created_by: str
    created_at: float
    notes: str
    state: str
    reason: str | None = None

    @property
    def label(self) -> str:
        return f"{self.model}:{self.version}"

    def summary(self) -> dict[str, Any]:
        """What the audit log keeps of a version: everything but the signature."""
        return {k: v for k, v in asdict(self).items() if k != "signature"}


def _record(row: sqlite3.Row) -> VersionRecord:
    return VersionRecord(row["model"], row["version"], row["sha256"], row["size"], row["backend"],
                         json.loads(row["signature"]), row["created_by"], row["created_at"],
                         row["notes"], row["state"], row["reason"])


class Lifecycle:
    """The versions and aliases of a registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def add(self, record: VersionRecord, actor: str) -> VersionRecord:
        """Record a new version (normally in state `validating`); it may take the number of
        one that failed (the audit log keeps that one's record)."""
        if not is_name(record.model) or not is_version(record.version):
            raise RegistryError(f"a version is registered as <model>:<number>, the model's name "
                                f"{rule()}; got {shown(record.model)}:{shown(record.version)}")
        with self.registry.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO models (name, created_at) VALUES (?, ?)",
                         (record.model, record.created_at))
            known = self._get(conn, record.model, record.version)
            if known is not None and known.state != "failed":
                raise RegistryError(f"version {record.label} is already registered; "
                                    "choose another version number")
            if known is not None:  # a failed registration does not use its number up
                conn.execute("DELETE FROM versions WHERE model = ? AND version = ?",
                             (record.model, record.version))
            conn.execute(f"INSERT INTO versions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                         (record.model, record.version, record.sha256, record.size,
                          record.backend, json.dumps(record.signature), record.created_by,
                          record.created_at, record.notes, record.state, record.reason))
            self.registry.audit(actor, "version.register", record.label, None, record.summary())
        return record

    def set_state(self, model: str, version: str, state: str, actor: str,
                  reason: str | None = None, only_from: str | None = None) -> VersionRecord:
        """Move a version to `state`, audited. With `only_from`, only a version in that state
        moves (checked in the same transaction); any other is returned unchanged."""
        if state not in STATES:
            raise RegistryError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        with self.registry.transaction() as conn:
            before = self._require(conn, model, version)
            if only_from is not None and before.state != only_from:
                return before
            conn.execute("UPDATE versions SET state = ?, reason = ? WHERE model = ? AND "
                         "version = ?", (state, reason, model, version))
            after = self._require(conn, model, version)
            self.registry.audit(actor, f"version.{state}", after.label,
                                {"state": before.state}, {"state": state, "reason": reason})
        return after

    def get(self, model: str, version: str) -> VersionRecord | None:
        with self.registry.reading() as conn:
            return self._get(conn, model, version)

    def versions(self, model: str | None = None) -> list[VersionRecord]:
        where, params = ("WHERE model = ?", (model,)) if model else ("", ())
        with self.registry.reading() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM versions {where} ORDER BY model, "
                                "CAST(version AS INTEGER), version", params).fetchall()
        return [_record(row) for row in rows]

    def next_version(self, model: str) -> str:
        numbers = [int(r.version) for r in self.versions(model)
                   if is_version(r.version) and r.state != "failed"]
        return str(max(numbers, default=0) + 1)

    def aliases(self, model: str) -> dict[str, str]:
        with self.registry.reading() as conn:
            return dict(conn.execute("SELECT alias, version FROM aliases WHERE model = ? "
                                     "ORDER BY alias", (model,)).fetchall())

    def promote(self, model: str, version: str, actor: str,
                alias: str = PRODUCTION) -> str | None:
        """Point `alias` at a ready version; the version it pointed at before (or None)."""
        if not is_name(alias):
            raise RegistryError(f"an alias name must be {rule()}; got {shown(alias)}")
        with self.registry.transaction() as conn:
            record = self._require(conn, model, version)
            if record.state != "ready":
                raise RegistryError(f"version {record.label} is {record.state}, not ready: "
                                    "only a validated version can be promoted")
            before = self._alias(conn, model, alias)
            self._point(conn, model, alias, version)
            self.registry.audit(actor, "alias.set", f"{model}:{alias}", before, version)
        return before

    def rollback(self, model: str, actor: str, alias: str = PRODUCTION) -> tuple[str, str]:
        """Point `alias` back at the version it held before the current one: (from, to)."""
        with self.registry.transaction() as conn:
            current = self._alias(conn, model, alias)
            if current is None:
                raise RegistryError(f"model {model!r} has no {alias} version to roll back")
            rows = conn.execute("SELECT version FROM alias_history WHERE model = ? AND alias = ? "
                                "ORDER BY id DESC", (model, alias)).fetchall()
            earlier = [row[0] for row in rows if row[0] != current]
            target = next((v for v in earlier if self._ready(conn, model, v)), None)
            if target is None:
                raise RegistryError(f"model {model!r} has no earlier ready {alias} version "
                                    f"than {current} to roll back to")
            self._point(conn, model, alias, target)
            self.registry.audit(actor, "alias.rollback", f"{model}:{alias}", current, target)
        return current, target

    def holders(self, model: str, version: str) -> list[str]:
        """What routes traffic to a version: its aliases and the traffic policy's weights."""
        held = [f"alias {a}" for a, v in self.aliases(model).items() if v == version]
        policy = self.registry.get_traffic(model)
        if policy is not None:
            if any(v == version for v, _ in policy.weights):
                held.append("the traffic policy's weights")
            if policy.shadow_version == version:
                held.append("the traffic policy's shadow")
        return held

    def release(self, model: str, version: str, actor: str, why: str) -> list[str]:
        """Take every alias and traffic share off a version, audited with `why`: what held it.

        A traffic policy left with no weights is cleared; a shadow of the version is dropped.
        """
        released: list[str] = []
        with self.registry.transaction() as conn:
            for alias, _ in conn.execute("SELECT alias, version FROM aliases WHERE model = ? AND "
                                         "version = ?", (model, version)).fetchall():
                conn.execute("DELETE FROM aliases WHERE model = ? AND alias = ?", (model, alias))
                self.registry.audit(actor, "alias.clear", f"{model}:{alias}", version,
                                    {"version": None, "reason": why})
                released.append(f"alias {alias}")
            policy = self.registry.get_traffic(model)
            if policy is not None and version in (*dict(policy.weights), policy.shadow_version):
                self.registry.release_traffic(conn, policy, version, actor, why)
                released.append("the traffic policy")
        return released

    def _point(self, conn: sqlite3.Connection, model: str, alias: str, version: str) -> None:
        conn.execute("INSERT OR REPLACE INTO aliases (model, alias, version) VALUES (?, ?, ?)",
                     (model, alias, version))
        conn.execute("INSERT INTO alias_history (model, alias, version, at) VALUES (?, ?, ?, ?)",
                     (model, alias, version, time.time()))

    @staticmethod
    def _alias(conn: sqlite3.Connection, model: str, alias: str) -> str | None:
        row = conn.execute("SELECT version FROM aliases WHERE model = ? AND alias = ?",
                           (model, alias)).fetchone()
        return None if row is None else str(row[0])

    def _ready(self, conn: sqlite3.Connection, model: str, version: str) -> bool:
        record = self._get(conn, model, version)
        return record is not None and record.state == "ready"

    @staticmethod
    def _get(conn: sqlite3.Connection, model: str, version: str) -> VersionRecord | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM versions WHERE model = ? AND version = ?",
                           (model, version)).fetchone()
        return None if row is None else _record(row)

    def _require(self, conn: sqlite3.Connection, model: str, version: str) -> VersionRecord:
        record = self._get(conn, model, version)
        if record is None:
            known = [row[0] for row in conn.execute(
                "SELECT version FROM versions WHERE model = ? ORDER BY version", (model,))]
            raise RegistryError(f"model {model!r} has no registered version {version!r}"
                                + (f" (registered: {', '.join(known)})" if known else ""))
        return record
