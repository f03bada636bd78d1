"""The admin commands as a user runs them: keys, traffic and audit against a temporary registry."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


def tg(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tensorgate", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "registry" / "tensorgate.db")


def test_keys_create_list_revoke(db: str) -> None:
    created = tg("keys", "create", "--name", "alice", "--role", "admin", "--models", "digits*",
                 "--models", "iris", "--rate", "10", "--burst", "20", "--registry", db)
    assert created.returncode == 0, created.stderr
    match = re.fullmatch(r"key: (tg_\S+)\n.*not be shown again.*\n", created.stdout)
    assert match, created.stdout
    secret = match.group(1)
    assert "alice" in created.stderr and secret not in created.stderr
    with Registry(db) as registry:
        record = registry.snapshot().keys[hashlib.sha256(secret.encode()).hexdigest()]
    assert (record.name, record.role, record.models) == ("alice", "admin", ("digits*", "iris"))
    assert (record.rate, record.burst) == (10.0, 20)

    assert tg("keys", "create", "--name", "bob", "--role", "infer", "--registry",
              db).returncode == 0
    listed = tg("keys", "list", "--registry", db)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "MODELS", "RATE", "BURST", "CONCURRENCY",
                                "CREATED"]
    assert lines[1].split()[:5] == ["alice", "admin", "digits*,iris", "10", "20"]
    assert lines[2].split()[:3] == ["bob", "infer", "*"]
    assert secret not in listed.stdout
    assert record.key_id not in listed.stdout

    revoked = tg("keys", "revoke", "bob", "--registry", db)
    assert revoked.returncode == 0, revoked.stderr
    assert [line.split()[0] for line in tg("keys", "list", "--registry",
                                           db).stdout.splitlines()] == ["NAME", "alice"]
    everything = tg("keys", "list", "--all", "--registry", db).stdout
    assert re.search(r"^bob .* revoked$", everything, re.MULTILINE), everything


def test_traffic_set_show_clear(db: str) -> None:
    put = tg("traffic", "set", "digits", "1=90", "2=10", "--sticky", "header:X-User",
             "--shadow", "3:5", "--registry", db)
    assert put.returncode == 0, put.stderr
    shown = tg("traffic", "show", "digits", "--registry", db)
    assert shown.returncode == 0, shown.stderr
    assert "1=90 (90%)" in shown.stdout and "2=10 (10%)" in shown.stdout
    assert "sticky: header:x-user" in shown.stdout
    assert "5% of requests copied to version 3" in shown.stdout
    with Registry(db) as registry:
        policy = registry.get_traffic("digits")
    assert policy is not None and policy.weights == (("1", 90), ("2", 10))

    cleared = tg("traffic", "clear", "digits", "--registry", db)
    assert cleared.returncode == 0, cleared.stderr
    assert "has no traffic policy" in tg("traffic", "show", "digits", "--registry", db).stdout
    again = tg("traffic", "clear", "digits", "--registry", db)
    assert again.returncode == 2
    assert again.stderr.startswith("tensorgate: model 'digits' has no traffic policy")


def test_audit_lists_changes_newest_first(db: str) -> None:
    tg("keys", "create", "--name", "alice", "--role", "infer", "--registry", db)
    tg("traffic", "set", "digits", "1=1", "--registry", db)
    tg("traffic", "set", "iris", "2=1", "--registry", db)
    log = tg("audit", "--registry", db)
    assert log.returncode == 0, log.stderr
    lines = log.stdout.splitlines()
    assert [line.split()[3:5] for line in lines] == [
        ["traffic.set", "iris"], ["traffic.set", "digits"], ["key.create", "key/alice"]]
    assert all(line.split()[2].startswith("cli:") for line in lines)
    assert '"weights":[["1",1]]' in lines[1]
    only = tg("audit", "--model", "digits", "--limit", "5", "--registry", db).stdout.splitlines()
    assert len(only) == 1 and "digits" in only[0]
    assert len(tg("audit", "--limit", "2", "--registry", db).stdout.splitlines()) == 2


def test_default_registry_beside_the_model_repository(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    created = tg("keys", "create", "--name", "a", "--role", "infer", "--model-repository",
                 str(tmp_path / "repo"))
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "tensorgate.db").is_file()
    assert not (tmp_path / "repo" / "tensorgate.db").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["keys", "create", "--name", "bad name", "--role", "infer"], "tensorgate: key name must"),
    (["keys", "create", "--name", "a", "--role", "infer", "--rate", "-1"], "tensorgate: rate"),
    (["keys", "create", "--name", "a", "--role", "root"], "invalid choice: 'root'"),
    (["keys", "revoke", "nobody"], "tensorgate: no key named 'nobody'"),
    (["traffic", "set", "digits", "1=0"], "tensorgate: weight of version '1'"),
    (["traffic", "set", "digits", "1=x"], "expected VERSION=WEIGHT"),
    (["traffic", "set", "digits", "1=1", "--sticky", "cookie"], "tensorgate: sticky must be"),
    (["traffic", "set", "digits", "1=1", "--shadow", "2"], "expected VERSION:PERCENT"),
    (["traffic", "set", "digits", "1=1", "--shadow", "2:150"], "must be in (0, 100]"),
    (["audit", "--limit", "0"], "tensorgate: limit must be an integer >= 1"),
])
def test_bad_input_exits_2_with_a_message(db: str, args: list[str], message: str) -> None:
    result = tg(*args, "--registry", db)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_key_exits_2(db: str) -> None:
    assert tg("keys", "create", "--name", "a", "--role", "infer", "--registry", db).returncode == 0
    again = tg("keys", "create", "--name", "a", "--role", "admin", "--registry", db)
    assert again.returncode == 2
    assert again.stdout == ""  # no secret printed for a key that was not created
    assert "tensorgate: a key named 'a' already exists" in again.stderr


def test_unopenable_registry_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = tg("keys", "list", "--registry", str(blocker / "tensorgate.db"))
    assert result.returncode == 2
    assert result.stderr.startswith("tensorgate: cannot open the registry")
