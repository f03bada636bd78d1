"""The export's source: a served model version found in the repository, its sha256 and backend."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import grpc

from common.errors import TensorgateError
from common.model_config import ConfigError, ModelConfig, load_model_config
from common.names import is_name, is_version, rule, shown
from runtime.backends import detect_backend, load_backend
from runtime.backends.base import Backend
from runtime.backends.torch_formats import AOTI, EXPORTED, sniff
from runtime.repository import version_folders

TARGETS = ("onnx", "onnx-fp16", "onnx-int8", "ort")


class EdgeError(TensorgateError):
    """An export that cannot be made or shipped; the message says what was wrong and expected."""

    def __init__(self, message: str,
                 code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        super().__init__(code, message)


@dataclass(frozen=True)
class Source:
    """One served version: where it is, what serves it and the hash that names it."""

    name: str
    version: int
    backend: str
    artifact: Path
    config: ModelConfig
    sha256: str
    notes: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def parse_ref(text: str) -> tuple[str, int | None]:
    """`MODEL` or `MODEL:VERSION` → (model, version or None for the newest)."""
    model, colon, version = text.partition(":")
    if not is_name(model) or (colon and not is_version(version)):
        raise EdgeError(f"expected MODEL or MODEL:VERSION, like digits:2 (MODEL {rule()}; "
                        f"VERSION a whole number from 1); got {shown(text)}")
    return model, int(version) if colon else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_notes(path: Path) -> str:
    """The leading comment block of config.yaml: where model authors describe preprocessing."""
    if not path.exists():
        return ""
    notes = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        notes.append(line.lstrip("#").strip())
    return " ".join(n for n in notes if n)


def find_source(repository: Path, model: str, version: int | None) -> Source:
    """The version folder `<repository>/<model>/<version>`; the newest version when None."""
    model_dir = Path(repository) / model
    if not model_dir.is_dir():
        known = sorted(p.name for p in Path(repository).iterdir() if p.is_dir()) \
            if Path(repository).is_dir() else []
        raise EdgeError(f"model {model!r} not found in the repository {repository} "
                        f"(it has {known or 'no models'})", grpc.StatusCode.NOT_FOUND)
    try:
        versions = version_folders(model_dir)
    except ConfigError as exc:
        raise EdgeError(str(exc)) from None
    if version is None and versions:
        version = versions[-1]
    if version not in versions:
        raise EdgeError(f"model {model!r} has no version {version} in {repository} "
                        f"(it has {versions or 'none'})", grpc.StatusCode.NOT_FOUND)
    config = load_model_config(model_dir / "config.yaml", model)
    backend, artifact = detect_backend(model_dir / str(version), config)
    _check_exportable(backend, artifact, f"{model}:{version}")
    return Source(model, version, backend, artifact, config, sha256_file(artifact),
                  config_notes(model_dir / "config.yaml"))


def _check_exportable(backend: str, artifact: Path, ref: str) -> None:
    """Edge bundles are made from ONNX and TorchScript; a .pt2 is refused by name."""
    kind = sniff(artifact) if backend == "torch" else None
    if kind in (EXPORTED, AOTI):
        raise EdgeError(f"{ref} is served from {kind} ({artifact.name}); edge bundles are made "
                        "from ONNX or TorchScript models: export the model to ONNX with "
                        "torch.onnx.export and register that as a version to bundle",
                        grpc.StatusCode.FAILED_PRECONDITION)


def load_served(source: Source) -> Backend:
    """The backend the runtime serves this version with, on the CPU with one thread."""
    config = source.config
    if config.device != "cpu":
        # NOTE: the edge figures compare CPU against CPU, whatever device the server uses.
        config = dataclasses.replace(config, device="cpu")
    try:
        return load_backend(source.backend, source.artifact, config, threads=1)
    except ConfigError:
        raise
    except Exception as exc:  # a backend library's own error: name the file it failed on
        raise EdgeError(f"cannot load {source.artifact} as the runtime would: {exc}",
                        grpc.StatusCode.FAILED_PRECONDITION) from None
