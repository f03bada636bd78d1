"""Hot swap: load, replace and retire model versions while requests flow, dropping none.

A new version is loaded, warmed up and validated before it is visible; a retired one leaves
every lookup first, finishes its queued and in-flight requests, and only then stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

import grpc
from google.protobuf import json_format, text_format

from common.errors import TensorgateError, invalid_argument, not_found
from common.model_config import ConfigError
from common.proto import model_config_pb2 as mc
from runtime.loading import stamp
from runtime.model import ModelStore, ServedModel
from runtime.repository import VersionSource, scan_model
from runtime.scheduler import Scheduler
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

    async def load(self, name: str) -> list[str]:
        """Bring `name` in line with its folder: new or changed versions in, removed ones out.

        Every new version is ready before any swap, so a failure leaves the model as it was.
        Returns what changed, as "loaded 3", "replaced 2", "retired 1".
        """
        async with self._lock:
            sources = await asyncio.to_thread(self._scan, name)
            current = self.store.loaded(name)
            fresh: list[ServedModel] = []
            for source in sources:
                loaded = current.get(source.version)
                if loaded is None or loaded.stamp != stamp(source.artifact):
                    fresh.append(await asyncio.to_thread(self._build, source))
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
            log.info("model %s unloaded", name)

    def _scan(self, name: str) -> list[VersionSource]:
        folder = self.repository / name
        if "/" in name or name.startswith(".") or not folder.is_dir():
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


def write_upload(model_dir: Path, config_json: str | None, files: Mapping[str, bytes]) -> None:
    """Put a load request's files (`file:<path>` parameters) and config into the model folder.

    Each file lands whole or not at all (written beside, then renamed); workers sharing the
    repository may all write the same bytes. A config arrives as Triton's JSON and is kept as
    config.pbtxt, which a config.yaml would override, so a model that has one is refused.
    """
    targets = {}
    for name in files:
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or len(relative.parts) < 2:
            raise invalid_argument(f"file parameter 'file:{name}': expected a path inside the "
                                   "model folder, like file:1/model.onnx")
        targets[name] = model_dir.joinpath(*relative.parts)
    if config_json is not None:
        if (model_dir / "config.yaml").exists():
            raise TensorgateError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"{model_dir / 'config.yaml'} exists and would override a "
                                  "config given with the load; edit that file instead")
        try:
            config = json_format.Parse(config_json, mc.ModelConfig())
        except json_format.ParseError as exc:
            raise invalid_argument(f"the 'config' parameter is not a model config in JSON: "
                                   f"{exc}") from None
        targets["config.pbtxt"] = model_dir / "config.pbtxt"
        files = {**files, "config.pbtxt": text_format.MessageToString(config).encode()}
    for name, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}")
        partial.write_bytes(files[name])
        os.replace(partial, target)
