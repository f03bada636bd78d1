"""Versions and aliases in the registry: states, promote, rollback, holders, audit, migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from common.registry import Registry, RegistryError
from common.registry.migrations import LATEST, MIGRATIONS
from common.registry.versions import Lifecycle, VersionRecord


def record(version: str, state: str = "validating") -> VersionRecord:
    return VersionRecord("digits", version, "ab" * 32, 10, "onnx", {"inputs": [], "outputs": []},
                         "test", 1.0, "", state)


@pytest.fixture
def lifecycle(tmp_path: Path) -> Lifecycle:
    return Lifecycle(Registry(tmp_path / "r.db"))


def ready(lifecycle: Lifecycle, *versions: str) -> None:
    for version in versions:
        lifecycle.add(record(version), "alice")
        lifecycle.set_state("digits", version, "ready", "alice")


def test_a_version_moves_from_validating_to_failed_with_its_reason(lifecycle: Lifecycle) -> None:
    lifecycle.add(record("1"), "alice")
    failed = lifecycle.set_state("digits", "1", "failed", "alice", "output not finite")
    assert (failed.state, failed.reason) == ("failed", "output not finite")
    actions = [e.action for e in lifecycle.registry.audit_log(model="digits")]
    assert actions == ["version.failed", "version.register"]


def test_a_state_change_only_from_a_state_leaves_any_other_alone(lifecycle: Lifecycle) -> None:
    ready(lifecycle, "1")
    lifecycle.set_state("digits", "1", "retired", "alice")
    kept = lifecycle.set_state("digits", "1", "failed", "gateway", "gone", only_from="ready")
    assert kept.state == "retired"
    actions = [e.action for e in lifecycle.registry.audit_log(model="digits")]
    assert actions[0] == "version.retired"
    ready(lifecycle, "2")
    moved = lifecycle.set_state("digits", "2", "failed", "gateway", "gone", only_from="ready")
    assert (moved.state, moved.reason) == ("failed", "gone")


def test_a_version_number_is_registered_once(lifecycle: Lifecycle) -> None:
    lifecycle.add(record("1"), "alice")
    with pytest.raises(RegistryError, match="already registered"):
        lifecycle.add(record("1"), "bob")
    assert lifecycle.next_version("digits") == "2"


def test_only_a_ready_version_is_promoted(lifecycle: Lifecycle) -> None:
    lifecycle.add(record("1"), "alice")
    with pytest.raises(RegistryError, match="validating, not ready"):
        lifecycle.promote("digits", "1", "alice")
    with pytest.raises(RegistryError, match="no registered version '7'"):
        lifecycle.promote("digits", "7", "alice")


def test_rollback_goes_back_one_production_version_at_a_time(lifecycle: Lifecycle) -> None:
    ready(lifecycle, "1", "2", "3")
    assert lifecycle.promote("digits", "1", "alice") is None
    assert lifecycle.promote("digits", "2", "alice") == "1"
    assert lifecycle.promote("digits", "3", "alice") == "2"
    assert lifecycle.rollback("digits", "bob") == ("3", "2")
    assert lifecycle.aliases("digits") == {"production": "2"}
    assert lifecycle.registry.snapshot().production == {"digits": "2"}
    audit = lifecycle.registry.audit_log(model="digits", limit=1)[0]
    assert (audit.actor, audit.action, audit.before, audit.after) == (
        "bob", "alias.rollback", "3", "2")


def test_rollback_skips_versions_no_longer_ready_and_says_when_there_is_none(
        lifecycle: Lifecycle) -> None:
    ready(lifecycle, "1", "2")
    with pytest.raises(RegistryError, match="no production version"):
        lifecycle.rollback("digits", "bob")
    lifecycle.promote("digits", "1", "alice")
    lifecycle.promote("digits", "2", "alice")
    lifecycle.set_state("digits", "1", "retired", "alice")
    with pytest.raises(RegistryError, match="no earlier ready production version than 2"):
        lifecycle.rollback("digits", "bob")


def test_holders_name_aliases_weights_and_shadow(lifecycle: Lifecycle) -> None:
    ready(lifecycle, "1", "2")
    lifecycle.promote("digits", "1", "alice")
    lifecycle.registry.set_traffic("digits", {"1": 90, "2": 10}, shadow=("2", 5.0))
    assert lifecycle.holders("digits", "1") == ["alias production",
                                                "the traffic policy's weights"]
    assert lifecycle.holders("digits", "2") == ["the traffic policy's weights",
                                                "the traffic policy's shadow"]


def test_an_old_database_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO models (name, created_at) VALUES ('digits', 1)")
    conn.close()
    with Registry(path) as registry:
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA user_version").fetchone()[0] == LATEST == len(MIGRATIONS)
        lifecycle = Lifecycle(registry)
        ready(lifecycle, "1")
        lifecycle.promote("digits", "1", "alice")
        assert lifecycle.aliases("digits") == {"production": "1"}
