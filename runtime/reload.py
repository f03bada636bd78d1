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

from common.errors import TensorgateError, not_found
from common.model_config import ConfigError
from common.names import check_name
from runtime.loading import stamp
from runtime.model import ModelStore, ServedModel
from runtime.repository import VersionSource, scan_model
from runtime.scheduler import Scheduler
from runtime.staging import Upload, stage
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
        #: The folder (outside the repository) each model loaded with files is served from.
        self._overrides: dict[str, Path] = {}

    async def load(self, name: str, upload: Upload | None = None) -> list[str]:
        """Bring `name` in line with its folder: new or changed versions in, removed ones out.

        Every new version is ready before any swap, so a failure leaves the model as it was.
        An upload is staged apart (Triton's override files) and served from there: the
        repository is never written; an unload or a load without files leaves the stage.
        Returns what changed, as "loaded 3", "replaced 2", "retired 1".
        """
        check_name(name)
        async with self._lock:
            staged = None
            served = False
            try:
                if upload is not None:
                    staged = await asyncio.to_thread(stage, self.repository, name, upload)
                sources = await asyncio.to_thread(self._scan, name, staged)
                current = self.store.loaded(name)
                fresh = [await asyncio.to_thread(self._build, source) for source in sources
                         if source.version not in current
                         or current[source.version].stamp != stamp(source.artifact)]
                changes = await self._swap(name, sources, current, fresh)
                self._leave_override(name, None if staged is None else staged.parent)
                served = True
                return changes
            except TensorgateError as exc:
                if staged is not None:  # name the model's folder, not the stage
                    exc.message = exc.message.replace(str(staged), name)
                # NOTE: paths relative to the repository: the caller learns no server path.
                exc.message = exc.message.replace(f"{self.repository}/", "")
                if exc.code != grpc.StatusCode.NOT_FOUND and not self.store.loaded(name):
                    self.store.mark_unavailable(name, self.reason(exc.message))
                raise
            finally:
                if staged is not None and not served:
                    shutil.rmtree(staged.parent, ignore_errors=True)

    def _leave_override(self, name: str, new: Path | None) -> None:
        """`new` becomes the model's override folder (None: it has none); the old one goes."""
        old = self._overrides.pop(name, None)
        if new is not None:
            self._overrides[name] = new
        if old is not None and old != new:
            shutil.rmtree(old, ignore_errors=True)

    def reason(self, message: str) -> str:
        """A failure as the index shows it: one line, paths relative to the repository."""
        text = " ".join(message.replace(f"{self.repository}/", "").split())
        return text if len(text) <= 300 else text[:300] + "…"

    def close(self) -> None:
        """Remove every override folder: a restarted worker serves the repository's files."""
        for name in list(self._overrides):
            self._leave_override(name, None)

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

    async def unload(self, name: str) -> None:
        """Take every version of `name` out of service, draining each."""
        async with self._lock:
            current = self.store.loaded(name)
            if not current:
                raise not_found(f"model '{name}' is not loaded; models: {self.store.names()}")
            await self._retire(list(current.values()))
            self._leave_override(name, None)
            self.store.mark_unavailable(name, "unloaded", sorted(current))
            log.info("model %s unloaded", name)

    def _scan(self, name: str, staged: Path | None = None) -> list[VersionSource]:
        folder = staged or self.repository / name
        if not folder.is_dir():
            raise not_found(f"no model folder {name!r} in the repository")
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

