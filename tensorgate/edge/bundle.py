"""The last stage of an edge export: the files, manifest.json and a signature, written atomically.

A bundle is a directory or a .tar.gz; `run.py` inside it is tensorgate/edge/runner.py, verbatim.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tensorgate.edge import runner
from tensorgate.edge.source import EdgeError

FORMAT = "tensorgate-edge-bundle/1"
RUNNER_FILE = "run.py"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key in PEM, as `openssl genpkey -algorithm ed25519` writes."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise EdgeError(f"cannot read the signing key {path}: {exc} (expected an unencrypted "
                        "Ed25519 private key in PEM)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgeError(f"{path}: a {type(key).__name__}, expected an Ed25519 private key "
                        "(openssl genpkey -algorithm ed25519)")
    return key


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def bundle_name(path: Path) -> str:
    """The bundle's name: the file or directory name without .tar.gz."""
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def seal(files: dict[str, bytes], manifest: dict[str, Any],
         key: Ed25519PrivateKey | None) -> dict[str, bytes]:
    """Add run.py, every file's sha256 and size to the manifest, and the signature when keyed."""
    files = {**files, RUNNER_FILE: Path(runner.__file__).read_bytes()}
    manifest = {**manifest, "files": {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
        for name, data in sorted(files.items())}}
    text = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    sealed = {**files, runner.MANIFEST: text}
    if key is not None:
        # NOTE: the signature covers manifest.json, which holds every other file's sha256.
        sealed[runner.SIGNATURE] = base64.b64encode(key.sign(text)) + b"\n"
    return sealed


def _archive(path: Path, files: dict[str, bytes], top: str) -> None:
    now = int(time.time())
    with tarfile.open(path, mode="w:gz") as archive:
        archive.addfile(_info(f"{top}/", 0, now, directory=True))
        for name, data in sorted(files.items()):
            archive.addfile(_info(f"{top}/{name}", len(data), now), io.BytesIO(data))


def _info(name: str, size: int, mtime: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid = size, mtime, 0, 0
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    return info


def write(out: Path, files: dict[str, bytes], replace: bool = False) -> Path:
    """Write a sealed bundle to `out` (a .tar.gz or a directory) by an atomic rename.

    A reader never sees half a bundle; of two writers racing for one path, the last rename wins
    when `replace`, and the loser's copy is discarded otherwise.
    """
    out = Path(out)
    if out.exists() and not replace:
        raise EdgeError(f"{out} already exists; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
    try:
        if is_archive(out):
            _archive(temporary, files, bundle_name(out))
            os.replace(temporary, out)
            return out
        temporary.mkdir()
        for name, data in files.items():
            (temporary / name).write_bytes(data)
        if out.exists():
            # NOTE: a directory cannot be renamed over a non-empty one; move the old one aside.
            aside = out.parent / f".{out.name}.{uuid.uuid4().hex}.old"
            os.replace(out, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(temporary, out)
        return out
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()
