"""The registry store: schema, keys, traffic policies, audit log, generation and the watcher."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.policy import EMPTY, TrafficPolicy
from common.registry import Registry, RegistryError, default_registry_path
from common.registry.migrations import LATEST, MIGRATIONS, migrate, schema_version
from common.registry.watch import RegistryWatcher
from tests.waiting import until_async

TABLES = {"meta", "keys", "traffic", "audit", "models", "versions", "aliases"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "tensorgate.db"


@pytest.fixture
def registry(path: Path) -> Iterator[Registry]:
    with Registry(path, clock=Clock()) as opened:
        yield opened


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def db_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


# -- opening and schema ------------------------------------------------------------------------

def test_open_creates_schema_dirs_wal_and_private_file(registry: Registry, path: Path) -> None:
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conn = raw(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert names >= TABLES
    assert schema_version(conn) == LATEST == len(MIGRATIONS)
    conn.close()


def test_migrations_idempotent_and_reopen_keeps_data(registry: Registry, path: Path) -> None:
    registry.create_key("alice", "infer")
    conn = raw(path)
    assert migrate(conn) == LATEST  # a second run applies nothing and fails on nothing
    conn.close()
    registry.close()
    with Registry(path) as again:
        assert [record.name for record in again.list_keys()] == ["alice"]
        assert again.generation() == 1


def test_newer_schema_refused(path: Path) -> None:
    Registry(path).close()
    conn = raw(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    with pytest.raises(RegistryError, match="newer than this tensorgate knows"):
        Registry(path)


def test_versions_state_is_checked(registry: Registry, path: Path) -> None:
    conn = raw(path)
    conn.execute("INSERT INTO models (name, created_at) VALUES ('m', 0)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO versions (model, version, sha256, size, backend, signature, "
                     "created_by, created_at, state) VALUES ('m', '1', 'x', 1, 'onnx', '{}', "
                     "'t', 0, 'bogus')")
    conn.close()


def test_default_registry_path_is_beside_the_repository(tmp_path: Path) -> None:
    assert default_registry_path(tmp_path / "models") == tmp_path.resolve() / "tensorgate.db"


# -- API keys ----------------------------------------------------------------------------------

def test_create_key_returns_secret_kept_only_as_hash(registry: Registry, path: Path) -> None:
    record, secret = registry.create_key("alice", "infer", models=("digits*",), rate=5,
                                         burst=10, concurrency=2)
    assert secret.startswith("tg_") and len(secret) > 40
    digest = hashlib.sha256(secret.encode()).hexdigest()
    snapshot = registry.snapshot()
    assert snapshot.keys[digest] == record
    principal = record.principal()
    assert principal.subject == "key:alice"
    assert (principal.rate, principal.burst, principal.concurrency) == (5.0, 10, 2)
    assert principal.may_use("digits-v2") and not principal.may_use("iris")
    assert secret.encode() not in db_bytes(path)
    registry.close()
    assert secret.encode() not in db_bytes(path)
    assert digest.encode() in db_bytes(path)


def test_two_keys_have_different_secrets(registry: Registry) -> None:
    _, first = registry.create_key("a", "infer")
    _, second = registry.create_key("b", "infer")
    assert first != second
    assert len(registry.snapshot().keys) == 2


def test_duplicate_name_refused_even_after_revoke(registry: Registry) -> None:
    registry.create_key("alice", "infer")
    with pytest.raises(RegistryError, match="'alice' already exists"):
        registry.create_key("alice", "admin")
    registry.revoke_key("alice")
    with pytest.raises(RegistryError, match="already exists"):
        registry.create_key("alice", "infer")
    assert registry.generation() == 2  # the refused creations changed nothing


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "", "role": "infer"}, "key name must be"),
    ({"name": "a b", "role": "infer"}, "key name must be"),
    ({"name": "a/b", "role": "infer"}, "key name must be"),
    ({"name": "a", "role": "root"}, "role must be one of infer, admin"),
    ({"name": "a", "role": "infer", "models": ()}, "models must be one or more"),
    ({"name": "a", "role": "infer", "models": ("",)}, "models must be one or more"),
    ({"name": "a", "role": "infer", "rate": -1}, "rate must be"),
    ({"name": "a", "role": "infer", "rate": float("nan")}, "rate must be"),
    ({"name": "a", "role": "infer", "burst": -1}, "burst must be an integer >= 0"),
    ({"name": "a", "role": "infer", "burst": 1.5}, "burst must be an integer >= 0"),
    ({"name": "a", "role": "infer", "concurrency": -3}, "concurrency must be"),
])
def test_invalid_key_refused(registry: Registry, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.create_key(**kwargs)
    assert registry.list_keys(include_revoked=True) == []
    assert registry.generation() == 0


def test_models_given_as_one_string_is_one_glob(registry: Registry) -> None:
    record, _ = registry.create_key("a", "infer", models="digits")
    assert record.models == ("digits",)


def test_revoke_removes_from_snapshot_and_list(registry: Registry) -> None:
    keep, _ = registry.create_key("keep", "infer")
    gone, _ = registry.create_key("gone", "admin")
    assert registry.has_admin_key()
    revoked = registry.revoke_key("gone", actor="tester")
    assert revoked.revoked and revoked.key_id == gone.key_id
    assert list(registry.snapshot().keys.values()) == [keep]
    assert [r.name for r in registry.list_keys()] == ["keep"]
    assert [(r.name, r.revoked) for r in registry.list_keys(include_revoked=True)] == [
        ("keep", False), ("gone", True)]
    assert not registry.has_admin_key()


def test_revoke_unknown_or_twice_refused(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="no key named 'nobody'"):
        registry.revoke_key("nobody")
    registry.create_key("a", "infer")
    registry.revoke_key("a")
    with pytest.raises(RegistryError, match="already revoked"):
        registry.revoke_key("a")


# -- generation --------------------------------------------------------------------------------

def test_generation_moves_on_every_change_not_on_reads(registry: Registry) -> None:
    changes = [
        lambda: registry.create_key("a", "admin"),
        lambda: registry.set_traffic("digits", {"1": 1}),
        lambda: registry.set_traffic("digits", {"1": 1, "2": 1}),
        lambda: registry.revoke_key("a"),
        lambda: registry.clear_traffic("digits"),
    ]
    for expected, change in enumerate(changes, start=1):
        change()
        assert registry.generation() == expected
        registry.snapshot()
        registry.list_keys(include_revoked=True)
        registry.get_traffic("digits")
        registry.audit_log()
        registry.has_admin_key()
        assert registry.generation() == expected
        assert registry.snapshot().generation == expected


def test_failed_change_rolls_back_everything(registry: Registry) -> None:
    with pytest.raises(RuntimeError), registry.transaction() as conn:
        conn.execute("INSERT INTO models (name, created_at) VALUES ('m', 0)")
        registry.audit("t", "model.create", "m", None, {"name": "m"})
        raise RuntimeError("boom")
    assert registry.generation() == 0
    assert registry.audit_log() == []


# -- traffic policies --------------------------------------------------------------------------

def test_set_get_clear_traffic(registry: Registry) -> None:
    policy = registry.set_traffic("digits", {"1": 90, "2": 10}, sticky="header:X-User",
                                  shadow=("3", 5))
    assert policy == TrafficPolicy("digits", (("1", 90), ("2", 10)), "header:x-user", "3", 5.0)
    assert registry.get_traffic("digits") == policy
    assert registry.snapshot().traffic == {"digits": policy}
    replaced = registry.set_traffic("digits", [("2", 1)], sticky="sub")
    assert registry.get_traffic("digits") == replaced
    assert replaced.shadow_version is None and replaced.shadow_percent == 0.0
    assert registry.clear_traffic("digits") == replaced
    assert registry.get_traffic("digits") is None
    assert registry.snapshot().traffic == {}


@pytest.mark.parametrize(("model", "weights", "sticky", "shadow", "message"), [
    ("digits", {}, "key", None, "at least one version"),
    ("digits", {"1": 0}, "key", None, "must be an integer > 0, got 0"),
    ("digits", {"1": -5}, "key", None, "must be an integer > 0"),
    ("digits", {"1": 1.5}, "key", None, "must be an integer > 0"),
    ("digits", {"1": True}, "key", None, "must be an integer > 0"),
    ("digits", [("1", 1), ("1", 2)], "key", None, "appears twice"),
    ("digits", [("1", 1, 3)], "key", None, "must be \\(version, weight\\) pairs"),
    ("digits", {"": 1}, "key", None, "must be a whole number from 1"),
    ("digits", {"v2": 1}, "key", None, "must be a whole number from 1"),
    ("digits", {"1": 1}, "user", None, "sticky must be 'key', 'sub' or 'header:<name>'"),
    ("digits", {"1": 1}, "header:", None, "sticky must be"),
    ("digits", {"1": 1}, "header:a b", None, "sticky must be"),
    ("digits", {"1": 1}, "key", ("2", 0), "shadow percent .* must be in \\(0, 100\\]"),
    ("digits", {"1": 1}, "key", ("2", 101), "must be in \\(0, 100\\]"),
    ("digits", {"1": 1}, "key", ("", 5), "must be a whole number from 1"),
    ("", {"1": 1}, "key", None, "model name must be 1-128 characters"),
    ("a:b", {"1": 1}, "key", None, "model name must be"),
    ("..", {"1": 1}, "key", None, "model name must be"),
    ("\x00", {"1": 1}, "key", None, "model name must be"),
])
def test_invalid_traffic_refused(registry: Registry, model: str, weights: Any, sticky: str,
                                 shadow: Any, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.set_traffic(model, weights, sticky=sticky, shadow=shadow)
    assert registry.generation() == 0
    assert registry.snapshot().traffic == {}


def test_shadow_of_100_percent_accepted(registry: Registry) -> None:
    assert registry.set_traffic("m", {"1": 1}, shadow=("2", 100)).shadow_percent == 100.0


def test_clear_unknown_traffic_refused(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="'digits' has no traffic policy"):
        registry.clear_traffic("digits")


# -- audit -------------------------------------------------------------------------------------

def test_audit_records_before_and_after(registry: Registry) -> None:
    registry.create_key("alice", "infer", actor="cli:ann")
    registry.revoke_key("alice", actor="cli:bob")
    registry.set_traffic("digits", {"1": 1}, actor="cli:ann")
    registry.clear_traffic("digits", actor="cli:ann")
    log = registry.audit_log()
    assert [(e.action, e.target, e.actor) for e in log] == [
        ("traffic.clear", "digits", "cli:ann"), ("traffic.set", "digits", "cli:ann"),
        ("key.revoke", "key/alice", "cli:bob"), ("key.create", "key/alice", "cli:ann")]
    clear, put, revoke, create = log
    assert create.before is None and create.after["role"] == "infer"
    assert "hash" not in create.after
    assert revoke.before["revoked"] is False and revoke.after["revoked"] is True
    assert put.before is None and put.after["weights"] == [["1", 1]]
    assert clear.before == put.after and clear.after is None
    assert log[0].at > log[-1].at


def test_audit_rows_cannot_be_changed(registry: Registry, path: Path) -> None:
    registry.create_key("alice", "infer")
    conn = raw(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET actor = 'someone else'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit")
    conn.close()
    assert [e.actor for e in registry.audit_log()] == ["cli"]


def test_audit_filter_by_model_and_limit(registry: Registry) -> None:
    registry.set_traffic("digits", {"1": 1})
    registry.set_traffic("digits2", {"1": 1})
    registry.create_key("digits", "infer")
    registry.audit("t", "version.register", "digits:3", None, {"version": "3"})
    registry.audit("t", "version.register", "digits2:1", None, {"version": "1"})
    assert [e.target for e in registry.audit_log(model="digits")] == ["digits:3", "digits"]
    assert len(registry.audit_log()) == 5
    assert [e.target for e in registry.audit_log(limit=2)] == ["digits2:1", "digits:3"]
    assert registry.audit_log(model="dig") == []
    with pytest.raises(RegistryError, match="limit must be an integer >= 1"):
        registry.audit_log(limit=0)


# -- several connections, the watcher ----------------------------------------------------------

def test_two_registries_on_one_file_see_each_other(path: Path) -> None:
    with Registry(path) as first, Registry(path) as second:
        _, secret = first.create_key("alice", "infer")
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert second.generation() == 1
        assert digest in second.snapshot().keys
        second.set_traffic("digits", {"1": 1})
        assert first.get_traffic("digits") is not None
        assert first.generation() == second.generation() == 2


def test_watcher_without_path_is_empty() -> None:
    watcher = RegistryWatcher(None, 0.01)
    assert watcher.snapshot is EMPTY
    assert watcher.refresh() is False


def test_watcher_refresh_picks_up_a_change(registry: Registry, path: Path) -> None:
    registry.create_key("a", "infer")
    watcher = RegistryWatcher(path, 0.5)
    try:
        before = watcher.snapshot
        assert before.generation == 1 and len(before.keys) == 1
        assert watcher.refresh() is False
        assert watcher.snapshot is before  # nothing moved: the same object, not a rebuild
        registry.set_traffic("digits", {"1": 3})
        assert watcher.refresh() is True
        assert watcher.snapshot.generation == 2
        assert watcher.snapshot.traffic["digits"].weights == (("1", 3),)
    finally:
        watcher.close()


async def test_watcher_run_polls_in_the_background(registry: Registry, path: Path) -> None:
    watcher = RegistryWatcher(path, 0.01)
    task = asyncio.create_task(watcher.run())
    try:
        registry.create_key("a", "infer")
        await until_async(lambda: watcher.snapshot.generation == 1, "the change seen")
        assert len(watcher.snapshot.keys) == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        watcher.close()


def test_watcher_keeps_snapshot_and_logs_an_error_once(
        registry: Registry, path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    registry.create_key("a", "infer")
    watcher = RegistryWatcher(path, 0.5)
    kept = watcher.snapshot

    def broken() -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(watcher._registry, "generation", broken)
    with caplog.at_level(logging.WARNING, logger="common.registry.watch"):
        for _ in range(3):
            assert watcher.refresh() is False
        assert watcher.snapshot is kept
        assert sum("disk I/O error" in r.getMessage() for r in caplog.records) == 1
        monkeypatch.undo()
        registry.revoke_key("a")
        assert watcher.refresh() is True
    assert watcher.snapshot.keys == {}
    assert any("readable again" in r.getMessage() for r in caplog.records)
    watcher.close()
    assert watcher.refresh() is False
