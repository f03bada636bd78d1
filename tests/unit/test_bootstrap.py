"""Auth at start-up: the first admin key once, owner-only; settings handed to child processes."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from common.registry import Registry, hash_secret
from common.settings import (
    AuthSettings,
    GatewaySettings,
    RuntimeSettings,
    TlsSettings,
    from_json,
    to_json,
)
from tensorgate.bootstrap import admin_key_path, announce_auth


def test_the_first_start_creates_one_admin_key_kept_as_a_hash_and_an_owner_only_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = GatewaySettings(registry_path=tmp_path / "r.db")
    written = announce_auth(settings, create_admin=True)
    assert written == admin_key_path(tmp_path / "r.db") == tmp_path / "r.admin-key"
    secret = written.read_text().strip()
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert secret in capsys.readouterr().out
    with Registry(tmp_path / "r.db") as registry:
        keys = registry.snapshot().keys
        assert [record.role for record in keys.values()] == ["admin"]
        assert hash_secret(secret) in keys
    assert announce_auth(settings, create_admin=True) is None
    assert capsys.readouterr().out == ""


def test_no_auth_creates_nothing_and_warns(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    settings = GatewaySettings(registry_path=tmp_path / "r.db",
                               auth=AuthSettings(enabled=False))
    with caplog.at_level(logging.WARNING):
        assert announce_auth(settings, create_admin=True) is None
    assert "authentication is OFF" in caplog.text
    assert not (tmp_path / "r.db").exists()


def test_a_gateway_alone_warns_when_no_key_could_ever_be_accepted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        announce_auth(GatewaySettings(registry_path=tmp_path / "r.db"))
    assert "no API keys" in caplog.text
    assert not admin_key_path(tmp_path / "r.db").exists()


def test_settings_survive_the_trip_to_a_child_process_as_json() -> None:
    gateway = GatewaySettings(runtime_endpoints=("unix:/a", "127.0.0.1:1"),
                              registry_path=Path("/x/r.db"), quota_path=Path("/x/q"),
                              auth=AuthSettings(jwt_secret="s", jwt_public_keys=(Path("k.pem"),)),
                              tls=TlsSettings(cert=Path("c.pem"), key=Path("k.pem")))
    back = from_json(GatewaySettings, to_json(gateway))
    assert back == gateway
    assert isinstance(back.auth.jwt_public_keys[0], Path)
    runtime = RuntimeSettings(model_repository=Path("/m"), threads=3)
    assert from_json(RuntimeSettings, to_json(runtime)) == runtime
