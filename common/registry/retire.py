"""Retiring a version: refused while it holds traffic; its folder leaves the runtime's sight.

Shared by `tensorgate models unregister` and the gateway's admin API.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common.registry.store import Registry, RegistryError
from common.registry.versions import Lifecycle, VersionRecord


class VersionHeld(RegistryError):
    """The version still receives traffic (an alias or the traffic policy points at it)."""

    def __init__(self, model: str, version: str, holders: list[str]) -> None:
        super().__init__(f"version {model}:{version} still holds traffic ({', '.join(holders)});"
                         " move the traffic first, or force it (--force, ?force=true)")
        self.holders = holders


def retire_version(registry: Registry, repository: Path, model: str, version: str, actor: str,
                   force: bool = False) -> VersionRecord:
    """Stop serving a version: VersionHeld while it holds traffic unless `force`; its folder
    moves to `<model>/.retired/<version>` (kept, out of the runtime's sight)."""
    lifecycle = Lifecycle(registry)
    held = lifecycle.holders(model, version)
    if held and not force:
        raise VersionHeld(model, version, held)
    if held:  # forced: nothing may route to a retired version
        lifecycle.release(model, version, actor, f"version {model}:{version} retired (forced)")
    folder = repository / model / version
    if folder.exists():
        graveyard = repository / model / ".retired"
        graveyard.mkdir(exist_ok=True)
        shutil.rmtree(graveyard / version, ignore_errors=True)
        folder.replace(graveyard / version)
    return lifecycle.set_state(model, version, "retired", actor)


def sweep_missing(registry: Registry, repository: Path, actor: str = "gateway") -> list[str]:
    """Ready versions whose folder was removed by hand: their aliases and traffic are released
    and they are marked failed, all audited. The labels (`model:version`) of those swept."""
    lifecycle = Lifecycle(registry)
    swept = []
    for record in lifecycle.versions():
        folder = repository / record.model / record.version
        if record.state != "ready" or folder.is_dir():
            continue
        why = f"its folder {folder} is gone"
        lifecycle.release(record.model, record.version, actor, why)
        lifecycle.set_state(record.model, record.version, "failed", actor, why)
        swept.append(record.label)
    return swept
