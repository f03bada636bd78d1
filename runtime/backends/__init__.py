"""Backends that run a batch: ONNX Runtime and PyTorch (TorchScript, torch.export programs and
AOTInductor packages)."""

from __future__ import annotations

from pathlib import Path

from common.model_config import ConfigError, ModelConfig
from runtime.backends.base import Backend

ARTIFACTS = {"model.onnx": "onnx", "model.pt": "torch", "model.pt2": "torch"}


def detect_backend(version_dir: Path, config: ModelConfig) -> tuple[str, Path]:
    """Which backend serves a version folder, and its artifact."""
    found = [(kind, version_dir / name) for name, kind in ARTIFACTS.items()]
    found = [(kind, path) for kind, path in found if path.exists()]
    if config.backend is not None:
        found = [(kind, path) for kind, path in found if kind == config.backend]
    if not found:
        wanted = " or ".join(n for n, k in ARTIFACTS.items() if config.backend in (None, k))
        raise ConfigError(f"{version_dir}: no model file found (expected {wanted})")
    same = [path.name for kind, path in found if kind == found[0][0]]
    if len(same) > 1:
        # NOTE: which of two files of one backend serves is never guessed.
        raise ConfigError(f"{version_dir}: {' and '.join(same)} are both there; keep one, or "
                          "name the one to serve with default_model_filename")
    return found[0]


def load_backend(kind: str, path: Path, config: ModelConfig, threads: int,
                 quiet: bool = False) -> Backend:
    """Load one model instance's backend; the import is deferred so each backend is optional.

    `quiet`: the model's other instances said it already, so fallbacks are not warned again.
    """
    if kind == "onnx":
        from runtime.backends.onnx import OnnxBackend

        return OnnxBackend(path, config, threads, quiet)
    from runtime.backends.torch import TorchBackend

    return TorchBackend(path, config, threads, quiet)
