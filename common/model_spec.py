"""The typed form of a model's configuration, which both readers build.

common.model_config reads `config.yaml` and hands `config.pbtxt` to common.pbtxt; both import
their types from here, so neither reader needs the other's module.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MAX_QUEUE_SIZE = 4096
# A bad value is echoed in its error, but never whole: a YAML alias bomb expands to millions.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring = 3, 8, 8, 80


class ConfigError(ValueError):
    """A model configuration that cannot be served, naming the file, the key and what is allowed."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output; `shape` excludes the batch dimension when the model batches."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DynamicBatching:
    max_queue_delay_microseconds: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    default_timeout_microseconds: int = 0


@dataclass(frozen=True)
class VersionPolicy:
    """Which version folders are served: Triton's `all`, `latest` N or `specific` versions."""

    kind: str = "all"  # all | latest | specific
    num_versions: int = 0
    versions: tuple[int, ...] = ()


@dataclass(frozen=True)
class Accelerator:
    """A GPU execution accelerator (Triton's `gpu_execution_accelerator`): its name and its
    checked parameters, values as text as in Triton's config."""

    name: str
    parameters: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str) -> str:
        return dict(self.parameters).get(key, default)


@dataclass(frozen=True)
class Optimization:
    """How a model runs on its device (Triton's `optimization`, and tensorgate's own keys)."""

    gpu_accelerators: tuple[Accelerator, ...] = ()
    #: CUDA graphs captured at load for each preferred batch size (Triton's `cuda.graphs`).
    cuda_graphs: bool = False
    #: PyTorch on CUDA: NHWC weights and inputs with cuDNN's autotuner; None: where the model
    #: has 4-D inputs or weights, the format measured faster at load.
    channels_last: bool | None = None


SERVE_ALL = VersionPolicy()
TRITON_DEFAULT_POLICY = VersionPolicy("latest", num_versions=1)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    source: Path
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching | None = None
    instance_count: int = 1
    device: str = "auto"
    backend: str | None = None
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    #: config.yaml serves every version unless it says otherwise; config.pbtxt follows Triton.
    version_policy: VersionPolicy = SERVE_ALL
    #: The artifact's file name in each version folder (Triton's `default_model_filename`).
    model_filename: str | None = None
    #: Class labels by output name, for the classification extension (index → label).
    labels: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: fp32 (as the model is), or fp16 / bf16 compute with the declared datatypes unchanged.
    precision: str = "fp32"
    optimization: Optimization = Optimization()


def key_error(path: Path, key: str, allowed: str, got: Any) -> ConfigError:
    """The error for a bad value: the file, the key, what is allowed and (shortened) what came."""
    return ConfigError(f"{path}: key '{key}': expected {allowed}, got {_SHORT.repr(got)}")


def read_labels(folder: Path, filename: str, path: Path, key: str) -> tuple[str, ...]:
    """The labels of a file in the model's folder, one a line; the name is a plain file name."""
    if Path(filename).name != filename or filename in (".", ".."):
        raise key_error(path, key, "a file name in the model's folder", filename)
    target = folder / filename
    if target.is_symlink() or not target.is_file():
        raise ConfigError(f"{path}: {key}: no labels file {filename!r} beside the config")
    try:
        labels = tuple(target.read_text(encoding="utf-8").splitlines())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {key}: {filename} is not UTF-8 text ({exc.reason})") from None
    if not labels:
        raise ConfigError(f"{path}: {key}: {filename} is empty (expected one label a line)")
    return labels
