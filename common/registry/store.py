"""The registry store: API keys, traffic policies and the audit log in one SQLite file (WAL).

Every change is one transaction that also bumps the generation counter and appends an audit row.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any
from urllib.parse import quote

from common.policy import KeyRecord, Snapshot, TrafficPolicy
from common.registry.checks import (
    RegistryError,
    check_count,
    check_key,
    check_model,
    check_ready,
    check_shadow,
    check_sticky,
    check_weights,
)
from common.registry.migrations import LATEST, migrate, schema_version

#: How long a connection waits for another process's write lock before giving up.
BUSY_TIMEOUT_S = 5.0
_KEY_COLUMNS = "key_id, name, role, models, rate, burst, concurrency, created_at, revoked_at"
_TRAFFIC_COLUMNS = "model, weights, sticky, shadow_version, shadow_percent"


@dataclass(frozen=True)
class AuditEntry:
    """One change as the audit log recorded it; `before` and `after` are decoded JSON (or None)."""

    id: int
    at: float
    actor: str
    action: str
    target: str
    before: Any
    after: Any


def key_target(name: str) -> str:
    """The audit target of an API key; `/` keeps it apart from model targets (`model[:version]`)."""
    return f"key/{name}"


def hash_secret(secret: str) -> str:
    """What the registry keeps of a key's secret, and what the gateway looks a caller up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _create_private(path: Path) -> None:
    """Create the database file for its owner only (SQLite gives -wal and -shm the same mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _key_record(row: sqlite3.Row) -> KeyRecord:
    return KeyRecord(key_id=row["key_id"], name=row["name"], role=row["role"],
                     models=tuple(json.loads(row["models"])), rate=row["rate"],
                     burst=row["burst"], concurrency=row["concurrency"],
                     created_at=row["created_at"], revoked=row["revoked_at"] is not None)


def _key_json(record: KeyRecord) -> dict[str, Any]:
    return {"key_id": record.key_id, "name": record.name, "role": record.role,
            "models": list(record.models), "rate": record.rate, "burst": record.burst,
            "concurrency": record.concurrency, "revoked": record.revoked}


def _traffic_policy(row: sqlite3.Row) -> TrafficPolicy:
    weights = tuple((str(version), int(weight)) for version, weight in json.loads(row["weights"]))
    return TrafficPolicy(model=row["model"], weights=weights, sticky=row["sticky"],
                         shadow_version=row["shadow_version"],
                         shadow_percent=row["shadow_percent"])


def _traffic_json(policy: TrafficPolicy) -> dict[str, Any]:
    return {"weights": [list(pair) for pair in policy.weights], "sticky": policy.sticky,
            "shadow_version": policy.shadow_version, "shadow_percent": policy.shadow_percent}


class Registry:
    """One connection to a registry database; for one thread, while other processes share the file.

    `check_same_thread=False` lets a single owner hand the connection between threads (never to two
    at once), as the gateway's watcher does to keep reads off its event loop.
    """

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time,
                 check_same_thread: bool = True, create: bool = True) -> None:
        """`create=False` opens only a file that exists (SQLite would make an empty one): what
        a running gateway does, so a deleted registry is never silently replaced by a new one."""
        self.path = Path(path)
        self._clock = clock
        if not create and not self.path.exists():
            raise RegistryError(f"registry file {self.path} does not exist (was it deleted?); "
                                "restore it from a backup, or restart the gateway to begin "
                                "with an empty one")
        try:
            if create:
                _create_private(self.path)
            target = f"file:{quote(str(self.path.absolute()))}?mode={'rwc' if create else 'rw'}"
            self._conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=check_same_thread, uri=True)
        except (OSError, sqlite3.Error) as exc:
            raise RegistryError(f"cannot open the registry {self.path}: {exc}") from exc
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        conn = self._conn
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            version = schema_version(conn)
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot open the registry {self.path}: {exc}") from exc
        if str(mode).lower() != "wal":
            raise RegistryError(f"the registry {self.path} must be in WAL mode, SQLite kept {mode}")
        if version > LATEST:
            raise RegistryError(f"the registry {self.path} has schema version {version}, newer "
                                f"than this tensorgate knows ({LATEST}); upgrade tensorgate")
        migrate(conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that bumps the generation; raise inside it to roll back."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("UPDATE meta SET generation = generation + 1 WHERE id = 1")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        # NOTE: one short read transaction, so several SELECTs see the same generation; in WAL
        # mode it never blocks writers.
        conn = self._conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def audit(self, actor: str, action: str, target: str, before: Any, after: Any) -> None:
        """Append one audit row; inside `transaction()` it commits (or not) with the change."""
        self._conn.execute(
            "INSERT INTO audit (at, actor, action, target, before, after) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (self._clock(), actor, action, target,
             None if before is None else json.dumps(before, sort_keys=True),
             None if after is None else json.dumps(after, sort_keys=True)))

    def audit_log(self, model: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest entries first; `model` keeps those whose target is it or `model:...`."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise RegistryError(f"limit must be an integer >= 1, got {limit!r}")
        query = "SELECT * FROM audit"
        params: tuple[Any, ...] = ()
        if model is not None:
            # NOTE: substr, not LIKE: model names may hold '%' or '_'.
            query += " WHERE target = ? OR substr(target, 1, ?) = ?"
            params = (model, len(model) + 1, f"{model}:")
        rows = self._conn.execute(f"{query} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [AuditEntry(id=row["id"], at=row["at"], actor=row["actor"], action=row["action"],
                           target=row["target"],
                           before=None if row["before"] is None else json.loads(row["before"]),
                           after=None if row["after"] is None else json.loads(row["after"]))
                for row in rows]

    def generation(self) -> int:
        """The change counter: one single-row read, cheap enough to poll."""
        return int(self._conn.execute("SELECT generation FROM meta WHERE id = 1").fetchone()[0])

    def snapshot(self) -> Snapshot:
        """Unrevoked keys by hash and traffic policies by model, read in one consistent view."""
        with self.reading() as conn:
            generation = int(conn.execute("SELECT generation FROM meta").fetchone()[0])
            keys = {row["hash"]: _key_record(row) for row in conn.execute(
                f"SELECT hash, {_KEY_COLUMNS} FROM keys WHERE revoked_at IS NULL")}
            traffic = {row["model"]: _traffic_policy(row) for row in conn.execute(
                f"SELECT {_TRAFFIC_COLUMNS} FROM traffic")}
            production = dict(conn.execute(
                "SELECT model, version FROM aliases WHERE alias = 'production'").fetchall())
            ready: dict[str, tuple[str, ...]] = {}
            for model, version in conn.execute("SELECT model, version FROM versions WHERE "
                                               "state = 'ready' ORDER BY model, version"):
                ready[model] = (*ready.get(model, ()), version)
            settings = dict(conn.execute("SELECT name, value FROM settings").fetchall())
        return Snapshot(generation=generation, keys=MappingProxyType(keys),
                        traffic=MappingProxyType(traffic), production=MappingProxyType(production),
                        ready=MappingProxyType(ready), settings=MappingProxyType(settings))

    def set_setting(self, name: str, value: Any, actor: str) -> None:
        """Store one operator setting ('trace' or 'logging') for every gateway, audited."""
        with self.transaction() as conn:
            conn.execute("INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                         "updated_at = excluded.updated_at",
                         (name, json.dumps(value, sort_keys=True), self._clock()))
            self.audit(actor, "set settings", f"{name} settings", None, value)

    # -- API keys --------------------------------------------------------------------------------

    def create_key(self, name: str, role: str, models: Sequence[str] | str = ("*",),
                   rate: float = 0.0, burst: int = 0, concurrency: int = 0,
                   actor: str = "cli") -> tuple[KeyRecord, str]:
        """Create a key; return its record and its secret, which the registry does not keep."""
        globs = check_key(name, role, models, rate)
        burst = check_count("burst", burst)
        concurrency = check_count("concurrency", concurrency)
        secret = "tg_" + secrets.token_urlsafe(32)
        record = KeyRecord(key_id=secrets.token_hex(8), name=name, role=role, models=globs,
                           rate=float(rate), burst=burst, concurrency=concurrency,
                           created_at=self._clock())
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                raise RegistryError(f"a key named {name!r} already exists (names stay taken "
                                    "after a key is revoked); choose another name")
            conn.execute(
                "INSERT INTO keys (key_id, name, role, models, rate, burst, concurrency, hash, "
                "created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.key_id, name, role, json.dumps(list(globs)), record.rate, burst,
                 concurrency, hash_secret(secret), record.created_at, actor))
            self.audit(actor, "key.create", key_target(name), None, _key_json(record))
        return record, secret

    def list_keys(self, include_revoked: bool = False) -> list[KeyRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = self._conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM keys{where} ORDER BY created_at, name")
        return [_key_record(row) for row in rows]

    def revoke_key(self, name: str, actor: str = "cli") -> KeyRecord:
        """Revoke a key for good; the gateway refuses it from its next snapshot on."""
        with self.transaction() as conn:
            row = conn.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE name = ?",
                               (name,)).fetchone()
            if row is None:
                raise RegistryError(f"no key named {name!r}; `tensorgate keys list` shows them")
            before = _key_record(row)
            if before.revoked:
                raise RegistryError(f"key {name!r} is already revoked")
            conn.execute("UPDATE keys SET revoked_at = ? WHERE name = ?", (self._clock(), name))
            after = _key_record(conn.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE name = ?",
                                             (name,)).fetchone())
            self.audit(actor, "key.revoke", key_target(name), _key_json(before), _key_json(after))
        return after

    def has_admin_key(self) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM keys WHERE role = 'admin' AND revoked_at IS NULL LIMIT 1").fetchone()
        return row is not None

    # -- traffic policies ------------------------------------------------------------------------

    def set_traffic(self, model: str, weights: Mapping[str, int] | Sequence[tuple[str, int]],
                    sticky: str = "key", shadow: tuple[str, float] | None = None,
                    actor: str = "cli") -> TrafficPolicy:
        """Set (or replace) how a model's requests without a version are split between versions."""
        check_model(model)
        shadow_version, shadow_percent = check_shadow(model, shadow)
        policy = TrafficPolicy(model=model, weights=check_weights(model, weights),
                               sticky=check_sticky(sticky), shadow_version=shadow_version,
                               shadow_percent=shadow_percent)
        with self.transaction() as conn:
            check_ready(conn, model, [v for v, _ in policy.weights] + (
                [] if shadow_version is None else [shadow_version]))
            before = self._get_traffic(conn, model)
            conn.execute(
                "INSERT OR REPLACE INTO traffic (model, weights, sticky, shadow_version, "
                "shadow_percent, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (model, json.dumps([list(pair) for pair in policy.weights]), policy.sticky,
                 policy.shadow_version, policy.shadow_percent, self._clock()))
            self.audit(actor, "traffic.set", model,
                       None if before is None else _traffic_json(before), _traffic_json(policy))
        return policy

    def get_traffic(self, model: str) -> TrafficPolicy | None:
        return self._get_traffic(self._conn, model)

    def clear_traffic(self, model: str, actor: str = "cli") -> TrafficPolicy:
        """Remove a model's traffic policy; return the policy it had."""
        with self.transaction() as conn:
            before = self._get_traffic(conn, model)
            if before is None:
                raise RegistryError(f"model {model!r} has no traffic policy to clear")
            conn.execute("DELETE FROM traffic WHERE model = ?", (model,))
            self.audit(actor, "traffic.clear", model, _traffic_json(before), None)
        return before

    def release_traffic(self, conn: sqlite3.Connection, policy: TrafficPolicy, version: str,
                        actor: str, why: str) -> None:
        """Inside `transaction()`: drop `version` from a policy's weights and shadow, audited."""
        weights = [(v, w) for v, w in policy.weights if v != version]
        shadow = policy.shadow_version if policy.shadow_version != version else None
        before = _traffic_json(policy)
        if not weights:
            conn.execute("DELETE FROM traffic WHERE model = ?", (policy.model,))
            self.audit(actor, "traffic.clear", policy.model, before, {"reason": why})
            return
        conn.execute("UPDATE traffic SET weights = ?, shadow_version = ?, shadow_percent = ?, "
                     "updated_at = ? WHERE model = ?",
                     (json.dumps([list(pair) for pair in weights]), shadow,
                      policy.shadow_percent if shadow else 0.0, self._clock(), policy.model))
        after = self._get_traffic(conn, policy.model)
        assert after is not None
        self.audit(actor, "traffic.set", policy.model, before, {**_traffic_json(after),
                                                                "reason": why})

    @staticmethod
    def _get_traffic(conn: sqlite3.Connection, model: str) -> TrafficPolicy | None:
        row = conn.execute(f"SELECT {_TRAFFIC_COLUMNS} FROM traffic WHERE model = ?",
                           (model,)).fetchone()
        return None if row is None else _traffic_policy(row)
