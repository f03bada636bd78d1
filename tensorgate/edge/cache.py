"""Bundles built on first request, cached by source sha256 and target, for the gateway to serve."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc

from common.model_config import ConfigError
from tensorgate.edge.pipeline import ExportOptions, export_bundle, record
from tensorgate.edge.source import TARGETS, EdgeError, find_source

_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path, threading.Lock())


def cache_path(cache_dir: Path, model: str, version: int, target: str, sha256: str) -> Path:
    """Where a bundle lives in the cache; a new artifact under the same version gets a new name."""
    return Path(cache_dir) / f"{model}-{version}-{target}-{sha256[:16]}.tar.gz"


def bundle_for(repository: Path, model: str, version: int, target: str, cache_dir: Path, *,
               registry: Path | None = None, sign_key: Path | None = None,
               actor: str = "gateway") -> Path:
    """The verified .tar.gz bundle of `model` `version` for `target`, exported on first request.

    Blocking (seconds for a first build): call it off the event loop. Safe across threads (one
    build per bundle at a time) and processes (each writes under a temporary name and renames it
    into place, so a reader never sees a partial file). With `registry`, builds are audited.
    Raises EdgeError: NOT_FOUND for an unknown model or version, INVALID_ARGUMENT for an
    unknown target, FAILED_PRECONDITION for a model that cannot be loaded or fails verification.
    """
    if target not in TARGETS:
        raise EdgeError(f"unknown edge target {target!r}; expected one of {', '.join(TARGETS)}")
    try:
        source = find_source(Path(repository), model, version)
    except ConfigError as exc:
        raise EdgeError(str(exc), grpc.StatusCode.FAILED_PRECONDITION) from None
    path = cache_path(cache_dir, model, source.version, target, source.sha256)
    if path.is_file():
        return path
    with _lock_for(path):
        if path.is_file():  # another thread built it while this one waited
            return path
        options = ExportOptions(target=target, sign_key=sign_key, progress=False)
        try:
            written, manifest = export_bundle(source, options, path, replace=True)
        except EdgeError as exc:
            if registry is not None:
                record(registry, actor, source, target, path, None, exc.message)
            raise
        if registry is not None:
            record(registry, actor, source, target, written, manifest)
    return written
