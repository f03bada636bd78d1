"""The registry: an embedded SQLite database of API keys, traffic policies and an audit log."""

from __future__ import annotations

from pathlib import Path

from common.registry.store import AuditEntry, Registry, RegistryError, hash_secret

__all__ = ["AuditEntry", "Registry", "RegistryError", "default_registry_path", "hash_secret"]


def default_registry_path(model_repository: Path) -> Path:
    """Where the registry lives unless told otherwise: `tensorgate.db` beside the repository."""
    return Path(model_repository).resolve().parent / "tensorgate.db"
