"""A model version's way into the repository: copy, record, validate, and only then serve.

A version is staged in a dot folder the runtime's scan skips and renamed into place once valid.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.errors import TensorgateError
from common.model_config import ConfigError, ModelConfig, load_model_config
from common.names import check_name, check_version, is_version
from common.registry import Registry, RegistryError
from common.registry.retire import retire_version
from common.registry.versions import Lifecycle, VersionRecord
from runtime.backends import ARTIFACTS, detect_backend, load_backend
from runtime.backends.base import Backend
from runtime.repository import TRITON_CONFIG, YAML_CONFIG, VersionSource, scan_each
from runtime.warmup import ValidationError, validate

CHUNK = 1 << 20
log = logging.getLogger("tensorgate")


@dataclass(frozen=True)
class Copied:
    path: Path
    sha256: str
    size: int


def copy_artifact(source: Path, target: Path, progress: bool = True) -> Copied:
    """Copy `source` to `target` in chunks, hashing on the way, with a progress bar."""
    size = source.stat().st_size
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, target.open("wb") as dst, tqdm(
            total=size, unit="B", unit_scale=True, desc=f"copying {source.name}",
            disable=not progress, leave=False) as bar:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            bar.update(len(chunk))
    return Copied(target, digest.hexdigest(), size)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_and_validate(version_dir: Path, config: ModelConfig) -> tuple[str, Path, Backend]:
    """Load a staged version and validate it; ValidationError says why it may not serve."""
    try:
        kind, artifact = detect_backend(version_dir, config)
        backend = load_backend(kind, artifact, config, threads=1)
    except ConfigError as exc:
        raise ValidationError(f"the model does not fit its config: {exc}") from None
    except Exception as exc:  # onnxruntime and torch raise their own kinds
        raise ValidationError(f"the model does not load: {type(exc).__name__}: {exc}") from None
    validate(backend, config)
    return kind, artifact, backend


def sync_repository(registry: Registry, repository: Path, actor: str = "repository") -> list[str]:
    """Register the versions on disk the registry does not know (as ready); refuse an artifact
    whose sha256 differs from the registered one. The labels of the versions registered."""
    lifecycle = Lifecycle(registry)
    added = []
    for source in _servable(repository):
        name, version = source.config.name, str(source.version)
        digest = sha256_of(source.artifact)
        known = lifecycle.get(name, version)
        if known is None:
            record = VersionRecord(name, version, digest, source.artifact.stat().st_size,
                                   source.backend, _declared(source.config), actor, time.time(),
                                   "found in the repository", "ready")
            lifecycle.add(record, actor)
            added.append(record.label)
        elif known.sha256 != digest and known.state != "retired":
            raise ConfigError(
                f"{source.artifact}: its sha256 {digest[:12]}… does not match the "
                f"{known.sha256[:12]}… registered for {known.label}: the file changed after "
                "registration; restore it, or register the new file as a new version")
    return added


def _servable(repository: Path) -> list[VersionSource]:
    """The versions of every model whose folder scans; a broken model is logged and skipped
    (the runtime skips it too), unless no model scans: then its ConfigError stands."""
    found: list[VersionSource] = []
    broken: list[ConfigError] = []
    for name, sources in scan_each(repository):
        if isinstance(sources, ConfigError):
            log.error("model %r skipped: %s", name, " ".join(str(sources).split()))
            broken.append(sources)
        else:
            found += sources
    if broken and not found:
        raise broken[0]
    return found


def sync_on_start(registry_path: Path, repository: Path) -> None:
    """`serve`'s start: the repository and the registry agree, or a ConfigError says where not."""
    if not repository.is_dir():
        return  # the runtime's scan reports the missing repository in its own words
    try:
        with Registry(registry_path) as registry:
            added = sync_repository(registry, repository, actor="serve")
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None
    if added:
        log.info("registered %d version(s) found in %s: %s", len(added), repository,
                 ", ".join(added))


def _config_path(model_dir: Path) -> Path:
    """The config file the runtime reads (runtime.repository.model_config's rule)."""
    yaml, pbtxt = model_dir / YAML_CONFIG, model_dir / TRITON_CONFIG
    return yaml if yaml.exists() or not pbtxt.exists() else pbtxt


def _declared(config: ModelConfig) -> dict[str, Any]:
    def specs(tensors: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                for t in tensors or ()]

    return {"inputs": specs(config.inputs), "outputs": specs(config.outputs)}


def artifact_name(source: Path) -> str:
    """The file name a version's artifact takes in the repository, from the runtime's table."""
    for name in ARTIFACTS:
        if Path(name).suffix == source.suffix:
            return name
    raise RegistryError(f"{source}: expected a .onnx (ONNX), .pt (TorchScript) or .pt2 "
                        "(torch.export program or AOTInductor package) file")


@dataclass(frozen=True)
class Request:
    """What `tensorgate models register` was asked to do."""

    model: str
    file: Path
    version: str | None = None
    config: Path | None = None
    notes: str = ""


def register(registry: Registry, repository: Path, ask: Request, actor: str,
             progress: bool = True) -> VersionRecord:
    """Copy, record (validating), validate, then move into place (ready) or record why not
    (failed). A failed version leaves no folder, and its number is free for the next one."""
    lifecycle = Lifecycle(registry)
    model = _checked(check_name, ask.model, "model name")
    model_dir = repository / model
    version = (_checked(check_version, ask.version, "--version") if ask.version is not None
               else _next_version(lifecycle, model_dir))
    if (model_dir / version).exists():
        raise RegistryError(f"{model_dir / version} already exists; choose another version")
    # NOTE: staged beside the model folders, not in one: a failed new model leaves no folder.
    staging = repository / f".staging-{model}-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        config_path = _staged_config(model_dir, staging, ask)
        copied = copy_artifact(ask.file, staging / artifact_name(ask.file), progress)
        config = load_model_config(config_path, model)
        record = lifecycle.add(VersionRecord(
            model, version, copied.sha256, copied.size,
            ARTIFACTS[copied.path.name], _declared(config), actor,
            time.time(), ask.notes, "validating"), actor)
        try:
            _, _, backend = load_and_validate(staging, config)
        except ValidationError as exc:
            return lifecycle.set_state(model, version, "failed", actor, str(exc))
        _publish(staging, model_dir, version)
        del backend
        return lifecycle.set_state(record.model, version, "ready", actor)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _checked(check: Callable[[object, str], str], text: str, what: str) -> str:
    """The registry's error (the CLI's exit 2) for a name or version off the naming rule."""
    try:
        return check(text, what)
    except TensorgateError as exc:
        raise RegistryError(exc.message) from None


def _next_version(lifecycle: Lifecycle, model_dir: Path) -> str:
    on_disk = [int(p.name) for p in model_dir.glob("*") if is_version(p.name)]
    return str(max(int(lifecycle.next_version(model_dir.name)), max(on_disk, default=0) + 1))


def config_name(config: Path) -> str:
    """The name a config file takes in the model folder, by its format."""
    if config.suffix in (".yaml", ".yml"):
        return YAML_CONFIG
    if config.suffix == ".pbtxt":
        return TRITON_CONFIG
    raise RegistryError(f"{config}: expected a config in YAML (.yaml, .yml) or Triton's "
                        "format (.pbtxt)")


def _staged_config(model_dir: Path, staging: Path, ask: Request) -> Path:
    """The config the version will serve with: the model's own, or the one given for a new
    model (staged until the version is valid, so a failed first version leaves no model)."""
    existing = _config_path(model_dir)
    if model_dir.is_dir() and existing.exists():
        if ask.config is not None and ask.config.read_bytes() != existing.read_bytes():
            raise RegistryError(f"model {ask.model!r} already has {existing}; a version cannot "
                                "bring a different config (edit that file instead)")
        return existing
    if ask.config is None:
        raise RegistryError(f"model {ask.model!r} is new: give its config with --config FILE")
    staged = staging / config_name(ask.config)
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ask.config, staged)
    return staged


def _publish(staging: Path, model_dir: Path, version: str) -> None:
    """Rename the staged files into `<model>/<version>/` (and a new model's config beside)."""
    target = model_dir / version
    target.mkdir(parents=True)
    for item in staging.iterdir():
        if item.name in (YAML_CONFIG, TRITON_CONFIG):
            item.replace(model_dir / item.name)
        else:
            item.replace(target / item.name)


def retire(registry: Registry, repository: Path, model: str, version: str, actor: str,
           force: bool = False) -> VersionRecord:
    """Stop serving a version (see common.registry.retire; the gateway's admin API shares it).

    The last ready version of a model goes only with `force`: retiring it stops the model."""
    record = Lifecycle(registry).get(model, version)
    others = [r for r in Lifecycle(registry).versions(model)
              if r.version != version and r.state == "ready"]
    if record is not None and record.state == "ready" and not others and not force:
        raise RegistryError(f"{record.label} is the last ready version of {model!r}: retiring "
                            "it stops the model; register another first, or force it (--force)")
    return retire_version(registry, repository, model, version, actor, force)
