"""A served model version (config, backend, signature, scheduler, stats) and the store of them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from common.errors import invalid_argument, not_found
from common.model_config import ModelConfig, TensorSpec
from common.names import MAX_VERSION, is_version, shown
from runtime.backends.base import Backend
from runtime.stats import ModelStats


@dataclass(eq=False)
class ServedModel:
    config: ModelConfig
    version: int
    backends: list[Backend]
    #: How long a full warm-up batch took; infinite when it could not be measured.
    warmup_ns: float = float("inf")
    stats: ModelStats = field(default_factory=ModelStats)
    #: The artifact's (inode, size, mtime) when loaded: a reload replaces a changed file.
    stamp: tuple[int, ...] = ()
    #: Requests inside this version's scheduler now; a retired version waits for 0.
    in_flight: int = 0
    #: Set when the version is retired, and when its last request has left after that.
    drained: asyncio.Event | None = None

    def __post_init__(self) -> None:
        first = self.backends[0]
        self.name = self.config.name
        self.label = f"model '{self.name}' version {self.version}"
        self.inputs: tuple[TensorSpec, ...] = first.inputs
        self.outputs: tuple[TensorSpec, ...] = first.outputs
        self.input_index = {spec.name: i for i, spec in enumerate(self.inputs)}
        #: How messages name each input, formatted once rather than per request.
        self.input_what = tuple(f"input '{spec.name}' of {self.label}" for spec in self.inputs)
        self.output_names = frozenset(spec.name for spec in self.outputs)
        self.batched = self.config.max_batch_size > 0
        #: Each input's shape as callers see it (full_shape), computed once for validation.
        self.full_shapes = tuple(tuple(self.full_shape(spec)) for spec in self.inputs)
        self.platform = first.platform
        self.labels: dict[str, tuple[str, ...]] = dict(self.config.labels)

    def full_shape(self, spec: TensorSpec) -> list[int]:
        """The shape callers see: with the batch dimension as -1 when the model batches."""
        return [-1, *spec.shape] if self.batched else list(spec.shape)


class ModelStore:
    """Every loaded model version, looked up by name and version string."""

    def __init__(self) -> None:
        self._models: dict[str, dict[int, ServedModel]] = {}
        #: Models known but not served, for the repository index: (version or "", reason).
        self.unavailable: dict[str, list[tuple[str, str]]] = {}

    def add(self, model: ServedModel) -> None:
        self._models.setdefault(model.name, {})[model.version] = model
        self.unavailable.pop(model.name, None)

    def mark_unavailable(self, name: str, reason: str, versions: list[int] | None = None) -> None:
        """Note why `name` is not served (a failed load, "unloaded"), for the index."""
        self.unavailable[name] = ([(str(v), reason) for v in versions] if versions
                                  else [("", reason)])

    def discard(self, model: ServedModel) -> None:
        """Take a version out of every later lookup (the object may still be serving)."""
        versions = self._models.get(model.name, {})
        if versions.get(model.version) is model:
            del versions[model.version]
        if not versions:
            self._models.pop(model.name, None)

    def loaded(self, name: str) -> dict[int, ServedModel]:
        """The versions of `name` loaded now (none: empty), a copy."""
        return dict(self._models.get(name, {}))

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> dict[int, ServedModel]:
        versions = self._models.get(name)
        if not versions:
            raise not_found(f"model '{name}' is not served here; models: {self.names()}")
        return versions

    def get(self, name: str, version: str) -> ServedModel:
        """The named version, or the newest one when `version` is empty."""
        versions = self.versions(name)
        if not version:
            return versions[max(versions)]
        if not is_version(version):
            raise invalid_argument(f"model '{name}': version must be a positive integer "
                                   f"(1 to {MAX_VERSION}), got {shown(version)}")
        model = versions.get(int(version))
        if model is None:
            raise not_found(f"model '{name}' has no version {version}; "
                            f"versions: {sorted(versions)}")
        return model

    def all(self) -> list[ServedModel]:
        return [m for name in self.names() for _, m in sorted(self._models[name].items())]
