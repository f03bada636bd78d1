"""Start-up of auth: say when it is off, and give a fresh installation its first admin key.

The key is printed once and kept in a file only its owner can read; the registry keeps a hash.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from common.registry import Registry, RegistryError
from common.settings import GatewaySettings

log = logging.getLogger("tensorgate")


def admin_key_path(registry: Path) -> Path:
    """Where the first admin key is written: beside the registry."""
    return registry.with_suffix(".admin-key")


def announce_auth(settings: GatewaySettings, create_admin: bool = False) -> Path | None:
    """Log how callers are admitted; with `create_admin`, create the first admin key if there is
    none yet, and return the file it was written to."""
    auth = settings.auth
    if not auth.enabled:
        log.warning("authentication is OFF (--no-auth): every caller may infer and administer")
        return None
    jwt = bool(auth.jwt_secret or auth.jwt_public_keys or auth.jwks_file)
    if settings.registry_path is None:
        if not jwt:
            log.warning("auth is on but there is neither a registry nor a JWT key: "
                        "every call will be refused")
        return None
    with Registry(settings.registry_path) as registry:
        if registry.has_admin_key():
            return None
        if not create_admin:
            if not registry.list_keys() and not jwt:
                log.warning("no API keys in %s yet: create one with `tensorgate keys create`",
                            settings.registry_path)
            return None
        return _first_admin_key(registry, settings.registry_path)


def _first_admin_key(registry: Registry, path: Path) -> Path:
    try:
        _, secret = registry.create_key("admin", "admin", actor="serve")
    except RegistryError:  # "admin" taken by a revoked key
        _, secret = registry.create_key(f"admin-{int(time.time())}", "admin", actor="serve")
    target = admin_key_path(path)
    write_private(target, secret + "\n")
    print(f"tensorgate: created the first admin API key (shown only this once):\n  {secret}\n"
          f"tensorgate: it is also in {target} (readable only by you); send it as "
          f"'Authorization: Bearer <key>'", flush=True)
    return target


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, replacing what was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
