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
    # NOTE: retired before its folder moves, so a gateway's sweep never takes a ready version
    # whose folder just left for one removed by hand.
    record = lifecycle.set_state(model, version, "retired", actor)
    folder = repository / model / version
    if folder.exists():
        graveyard = repository / model / ".retired"
        graveyard.mkdir(exist_ok=True)
        shutil.rmtree(graveyard / version, ignore_errors=True)
        folder.replace(graveyard / version)
    return record


def folder_gone(repository: Path, model: str, version: str) -> bool:
    """True when the model's folder is here but the version's is not."""
    return (repository / model).is_dir() and not (repository / model / version).is_dir()


def sweep_missing(registry: Registry, repository: Path, actor: str = "gateway") -> list[str]:
    """Ready versions whose folder was removed by hand: their aliases and traffic are released
    and they are marked failed, all audited. The labels (`model:version`) of those swept.

    Only where the model's own folder is here: a host without the repository sweeps nothing.
    """
    lifecycle = Lifecycle(registry)
    swept = []
    for record in lifecycle.versions():
        if record.state != "ready" or not folder_gone(repository, record.model, record.version):
            continue
        folder = repository / record.model / record.version
        why = f"its folder {folder} is gone"
        # NOTE: only if still ready: a version retired meanwhile moved its own folder.
        if lifecycle.set_state(record.model, record.version, "failed", actor, why,
                               only_from="ready").state != "failed":
            continue
        lifecycle.release(record.model, record.version, actor, why)
        swept.append(record.label)
    return swept


def sweep_stale(registry: Registry, actor: str = "gateway") -> list[str]:
    """Aliases and traffic that name a version of a registered model which is not ready (failed,
    retired, never registered): released, audited. The labels of the versions released."""
    lifecycle = Lifecycle(registry)
    states: dict[str, dict[str, str]] = {}
    for record in lifecycle.versions():
        states.setdefault(record.model, {})[record.version] = record.state
    swept = []
    for model, versions in states.items():
        named = set(lifecycle.aliases(model).values())
        policy = registry.get_traffic(model)
        if policy is not None:
            named |= {version for version, _ in policy.weights}
            named |= {policy.shadow_version} if policy.shadow_version else set()
        for version in sorted(named - {v for v, state in versions.items() if state == "ready"}):
            why = f"version {model}:{version} is {versions.get(version, 'not registered')}"
            if lifecycle.release(model, version, actor, why):
                swept.append(f"{model}:{version}")
    return swept
