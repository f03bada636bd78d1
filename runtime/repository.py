"""The model repository on disk: `<repo>/<name>/config.yaml` (or Triton's `config.pbtxt`) and
`<repo>/<name>/<version>/model.*`; the config's version policy picks the versions served.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.model_config import ConfigError, ModelConfig, VersionPolicy, load_model_config
from common.names import MAX_VERSION, is_name, is_version, is_whole, rule
from runtime.backends import detect_backend

log = logging.getLogger("tensorgate.config")

YAML_CONFIG = "config.yaml"
TRITON_CONFIG = "config.pbtxt"
# Backends by artifact suffix, for a `default_model_filename` when the config names no platform.
SUFFIXES = {".onnx": "onnx", ".pt": "torch", ".pt2": "torch"}


@dataclass(frozen=True)
class VersionSource:
    """One servable version found on disk."""

    config: ModelConfig
    version: int
    backend: str
    artifact: Path


def scan(repo: Path) -> list[VersionSource]:
    """Every selected model version in the repository; raises ConfigError at the first fault."""
    if not repo.is_dir():
        raise ConfigError(f"{repo}: model repository not found (expected a directory)")
    found: list[VersionSource] = []
    model_dirs = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    for model_dir in model_dirs:
        found += scan_model(model_dir)
    return found


def scan_each(repo: Path) -> Iterator[tuple[str, list[VersionSource] | ConfigError]]:
    """Each model folder's name with its selected versions, or the ConfigError that stops it:
    start-up skips a broken model (and says why) rather than refusing to serve the others."""
    if not repo.is_dir():
        raise ConfigError(f"{repo}: model repository not found (expected a directory)")
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()
                            and not p.name.startswith(".")):
        if not is_name(model_dir.name):
            yield model_dir.name, ConfigError(f"{model_dir}: the folder's name is not a model "
                                              f"name ({rule()})")
            continue
        try:
            yield model_dir.name, scan_model(model_dir)
        except ConfigError as exc:
            yield model_dir.name, exc


def version_folders(model_dir: Path) -> list[int]:
    """The version numbers of a model folder's numbered subfolders, sorted.

    Other subfolders are not versions (as in Triton); a number that is no version ('0', '01', the
    two '1' and '01' naming one version) is refused by name rather than loaded unreachable.
    """
    numbered = sorted(p.name for p in model_dir.iterdir() if p.is_dir() and is_whole(p.name))
    for name in numbered:
        if not is_version(name) or name.startswith("0"):
            raise ConfigError(f"{model_dir}: version folder {name!r} is not a version: name it "
                              f"with a whole number from 1 to {MAX_VERSION}, no leading zero")
    return sorted(int(name) for name in numbered)


def scan_model(model_dir: Path) -> list[VersionSource]:
    """The selected versions of one model folder; raises ConfigError at the first fault."""
    config = model_config(model_dir)
    versions = version_folders(model_dir)
    if not versions:
        raise ConfigError(f"{model_dir}: no version folders (expected e.g. {model_dir}/1/)")
    found = []
    for version in select_versions(config.version_policy, versions, config.source):
        backend, artifact = artifact_of(model_dir / str(version), config)
        found.append(VersionSource(config, version, backend, artifact))
    return found


def model_config(model_dir: Path) -> ModelConfig:
    """The model's config.yaml, else its config.pbtxt, else the defaults; config.yaml wins."""
    yaml_path, triton_path = model_dir / YAML_CONFIG, model_dir / TRITON_CONFIG
    if triton_path.exists() and not yaml_path.exists():
        return load_model_config(triton_path, model_dir.name)
    if triton_path.exists():
        log.warning("%s: both %s and %s are present; using %s, %s is not read", model_dir,
                    YAML_CONFIG, TRITON_CONFIG, YAML_CONFIG, TRITON_CONFIG)
    return load_model_config(yaml_path, model_dir.name)


def select_versions(policy: VersionPolicy, versions: Sequence[int], source: Path) -> list[int]:
    """The versions (found on disk, ascending) that `policy` serves, ascending."""
    if policy.kind == "latest":
        return sorted(versions)[-policy.num_versions:]
    if policy.kind == "specific":
        missing = sorted(set(policy.versions) - set(versions))
        if missing:
            raise ConfigError(
                f"{source}: version_policy.specific lists version(s) "
                f"{', '.join(map(str, missing))} with no folder; found "
                f"{', '.join(map(str, versions))}")
        return sorted(policy.versions)
    return sorted(versions)


def artifact_of(version_dir: Path, config: ModelConfig) -> tuple[str, Path]:
    """The backend and model file of a version folder; the config may name the file."""
    if config.model_filename is None:
        return detect_backend(version_dir, config)
    artifact = version_dir / config.model_filename
    if not artifact.is_file():
        raise ConfigError(f"{version_dir}: no model file {config.model_filename!r} "
                          f"(default_model_filename in {config.source})")
    backend = config.backend or SUFFIXES.get(artifact.suffix)
    if backend is None:
        raise ConfigError(f"{config.source}: cannot tell the backend of {artifact.name}; set "
                          "platform to onnxruntime_onnx or pytorch_libtorch")
    return backend, artifact
