"""Hot swap: load, replace and retire model versions while requests flow, dropping none.

A new version is loaded, warmed up and validated before it is visible; a retired one leaves
every lookup first, finishes its queued and in-flight requests, and only then stops.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc

from common.errors import TensorgateError, not_found, unavailable
from common.model_config import ConfigError
from common.names import check_name
from runtime.loading import stamp
from runtime.model import ModelStore, ServedModel
from runtime.repository import VersionSource, scan_model
from runtime.scheduler import Scheduler
from runtime.staging import Upload, commit, stage
from runtime.warmup import ValidationError

log = logging.getLogger("tensorgate.runtime")

#: Blocking: load, warm up and validate one version (raises ConfigError or ValidationError).
Build = Callable[[VersionSource], ServedModel]
#: Start the scheduler of a loaded version.
Start = Callable[[ServedModel], Scheduler]


class Reloader:
    """Loads and unloads whole models on request (the repository extension), one at a time."""

    def __init__(self, repository: Path, store: ModelStore, schedulers: dict[int, Scheduler],
                 build: Build, start: Start, drain_timeout_s: float = 60.0) -> None:
        self.repository = repository
        self.store = store
        self.schedulers = schedulers
        self.build = build
        self.start = start
        self.drain_timeout_s = drain_timeout_s
        self._lock = asyncio.Lock()

    async def load(self, name: str, upload: Upload | None = None) -> list[str]:
        """Bring `name` in line with its folder: new or changed versions in, removed ones out.

        Every new version is ready before any swap, so a failure leaves the model as it was;
        an upload is loaded from its stage and reaches the repository only once all loaded.
        Returns what changed, as "loaded 3", "replaced 2", "retired 1".
        """
        check_name(name)
        async with self._lock:
            staged = None
            try:
                if upload is not None:
                    staged = await asyncio.to_thread(stage, self.repository, name, upload)
                sources = await asyncio.to_thread(self._scan, name, staged)
                current = self.store.loaded(name)
                fresh: dict[Path, ServedModel] = {}
                for source in sources:
                    loaded = current.get(source.version)
                    if loaded is None or loaded.stamp != stamp(source.artifact):
                        fresh[source.artifact] = await asyncio.to_thread(self._build, source)
                if staged is not None and upload is not None:
                    await asyncio.to_thread(self._commit, name, upload, staged, fresh)
            except TensorgateError as exc:
                if staged is not None:  # name the repository's path, not the stage's
                    exc.message = exc.message.replace(str(staged), str(self.repository / name))
                raise
            finally:
                if staged is not None:
                    shutil.rmtree(staged.parent, ignore_errors=True)
            return await self._swap(name, sources, current, list(fresh.values()))

    async def _swap(self, name: str, sources: list[VersionSource],
                    current: dict[int, ServedModel], fresh: list[ServedModel]) -> list[str]:
        changes = []
        for model in fresh:
            self.schedulers[id(model)] = self.start(model)
            self.store.add(model)
            changes.append(f"{'replaced' if model.version in current else 'loaded'} "
                           f"{model.version}")
        kept = {source.version for source in sources}
        swapped = {model.version for model in fresh}
        old = [m for v, m in current.items() if v not in kept or v in swapped]
        changes += [f"retired {m.version}" for m in old if m.version not in kept]
        await self._retire(old)
        log.info("model %s reloaded: %s", name, ", ".join(changes) or "no change")
        return changes

    def _commit(self, name: str, upload: Upload, staged: Path,
                fresh: dict[Path, ServedModel]) -> None:
        """The upload into the repository; each fresh version stamped as its file there, so
        the next load does not take the moved file for a changed one."""
        try:
            commit(self.repository, name, upload)
        except OSError as exc:
            raise unavailable(f"model '{name}' loaded but its files could not be written to "
                              f"the repository ({exc.strerror}); nothing changed") from None
        for artifact, model in fresh.items():
            if artifact.is_relative_to(staged):
                model.stamp = stamp(self.repository / name / artifact.relative_to(staged))

    async def unload(self, name: str) -> None:
        """Take every version of `name` out of service, draining each."""
        async with self._lock:
            current = self.store.loaded(name)
            if not current:
                raise not_found(f"model '{name}' is not loaded; models: {self.store.names()}")
            await self._retire(list(current.values()))
            log.info("model %s unloaded", name)

    def _scan(self, name: str, staged: Path | None = None) -> list[VersionSource]:
        folder = staged or self.repository / name
        if not folder.is_dir():
            raise not_found(f"no model folder {name!r} in the repository {self.repository}")
        try:
            return scan_model(folder)
        except ConfigError as exc:
            raise TensorgateError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None

    def _build(self, source: VersionSource) -> ServedModel:
        try:
            return self.build(source)
        except (ConfigError, ValidationError) as exc:
            reason = str(exc)
        except Exception as exc:  # onnxruntime and torch raise their own kinds
            reason = f"{type(exc).__name__}: {exc}"
        raise TensorgateError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"model '{source.config.name}' version {source.version} was not "
                              f"loaded: {reason}")

    async def _retire(self, models: list[ServedModel]) -> None:
        for model in models:
            self.store.discard(model)
            model.drained = asyncio.Event()
            if not model.in_flight:
                model.drained.set()
        for model in models:
            assert model.drained is not None
            try:
                await asyncio.wait_for(model.drained.wait(), self.drain_timeout_s)
            except TimeoutError:
                log.warning("%s: %d request(s) still in flight after %.0fs; stopping it anyway",
                            model.label, model.in_flight, self.drain_timeout_s)
            scheduler = self.schedulers.pop(id(model), None)
            if scheduler is not None:
                await scheduler.stop()

