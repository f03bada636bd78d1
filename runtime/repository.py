"""The model repository on disk: `<repo>/<name>/config.yaml`, `<repo>/<name>/<version>/model.*`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.model_config import ConfigError, ModelConfig, load_model_config
from runtime.backends import detect_backend


@dataclass(frozen=True)
class VersionSource:
    """One servable version found on disk."""

    config: ModelConfig
    version: int
    backend: str
    artifact: Path


def scan(repo: Path) -> list[VersionSource]:
    """Every model version in the repository; raises ConfigError at the first fault."""
    if not repo.is_dir():
        raise ConfigError(f"{repo}: model repository not found (expected a directory)")
    found: list[VersionSource] = []
    model_dirs = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    for model_dir in model_dirs:
        config = load_model_config(model_dir / "config.yaml", model_dir.name)
        versions = sorted(
            int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            raise ConfigError(f"{model_dir}: no version folders (expected e.g. {model_dir}/1/)")
        for version in versions:
            backend, artifact = detect_backend(model_dir / str(version), config)
            found.append(VersionSource(config, version, backend, artifact))
    return found
