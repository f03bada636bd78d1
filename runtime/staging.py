"""A load's files staged outside the repository, and moved in only once the version loaded.

The staged model folder links to the model's files on disk and holds the new ones, so the
reloader loads exactly what the repository will hold; a failed load deletes the stage alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import grpc
from google.protobuf import json_format, text_format

from common.errors import TensorgateError, invalid_argument
from common.names import check_name
from common.proto import model_config_pb2 as mc
from common.uploads import check_upload
from runtime.repository import TRITON_CONFIG, YAML_CONFIG


@dataclass
class Upload:
    """What a load brings: files by their path in the model folder, and a config (JSON)."""

    files: Mapping[str, bytes]
    config_json: str | None = None
    #: Filled by stage(): the checked paths and the bytes each will hold.
    contents: dict[PurePosixPath, bytes] = field(default_factory=dict)


def stage(repository: Path, name: str, upload: Upload) -> Path:
    """A staged copy of `<repository>/<name>` with the upload in it; the caller deletes
    its parent (tempfile's folder) whatever happens."""
    check_name(name)
    paths = check_upload(f"file:{key}" for key in upload.files)
    upload.contents = {path: upload.files[str(path)] for path in paths}
    model_dir = repository / name
    if upload.config_json is not None:
        upload.contents[PurePosixPath(TRITON_CONFIG)] = _pbtxt(model_dir, upload.config_json)
    _refuse_links(model_dir, upload.contents)
    staged = Path(tempfile.mkdtemp(prefix="tensorgate-load-")) / name
    try:
        _mirror(model_dir, staged, _folders(upload.contents), PurePosixPath())
        for path, data in upload.contents.items():
            target = staged.joinpath(*path.parts)
            if target.is_symlink():
                target.unlink()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    except OSError as exc:
        shutil.rmtree(staged.parent, ignore_errors=True)
        raise invalid_argument(f"the files of the load do not fit together: {exc.strerror}: "
                               f"{Path(exc.filename or '').name}") from None
    return staged


def commit(repository: Path, name: str, upload: Upload) -> dict[PurePosixPath, Path]:
    """Move the upload into `<repository>/<name>`: a new model's folder appears whole (one
    rename); files of a model on disk are each written beside, then renamed over."""
    model_dir = repository / name
    if not model_dir.exists():
        partial = repository / f".{name}.{uuid.uuid4().hex}.partial"
        try:
            _write(partial, upload.contents)
            partial.rename(model_dir)
            return {path: model_dir.joinpath(*path.parts) for path in upload.contents}
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
            if not model_dir.is_dir():  # else another worker made it first: write beside
                raise
    _refuse_links(model_dir, upload.contents)
    return _replace_files(model_dir, upload.contents)


def _replace_files(model_dir: Path, contents: Mapping[PurePosixPath, bytes]
                   ) -> dict[PurePosixPath, Path]:
    """Every file written beside its target first, then all renamed: a full disk leaves the
    model as it was (folders made for it are removed again)."""
    made: list[Path] = []
    written: dict[Path, Path] = {}
    try:
        for path, data in contents.items():
            target = model_dir.joinpath(*path.parts)
            for folder in reversed(target.parents):
                if folder.is_relative_to(model_dir) and not folder.exists():
                    folder.mkdir()
                    made.append(folder)
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
            partial.write_bytes(data)
            written[partial] = target
    except OSError:
        for partial in written:
            partial.unlink(missing_ok=True)
        for folder in reversed(made):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    for partial, target in written.items():
        os.replace(partial, target)
    return {path: model_dir.joinpath(*path.parts) for path in contents}


def _write(folder: Path, contents: Mapping[PurePosixPath, bytes]) -> None:
    for path, data in contents.items():
        target = folder.joinpath(*path.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _pbtxt(model_dir: Path, config_json: str) -> bytes:
    """A config sent as Triton's JSON, kept as config.pbtxt; a config.yaml would override it,
    so a model that has one is refused."""
    if (model_dir / YAML_CONFIG).exists():
        raise TensorgateError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"{model_dir / YAML_CONFIG} exists and would override a config "
                              "given with the load; edit that file instead")
    try:
        config = json_format.Parse(config_json, mc.ModelConfig())
    except json_format.ParseError as exc:
        raise invalid_argument(f"the 'config' parameter is not a model config in JSON: "
                               f"{exc}") from None
    return text_format.MessageToString(config).encode()


def _folders(contents: Mapping[PurePosixPath, bytes]) -> set[PurePosixPath]:
    """The folders (relative to the model's) the upload writes into."""
    return {parent for path in contents for parent in path.parents if parent.parts}


def _refuse_links(model_dir: Path, contents: Mapping[PurePosixPath, bytes]) -> None:
    """No file is written through a symbolic link: not the model folder, nor one inside it."""
    for relative in {PurePosixPath(), *_folders(contents), *contents}:
        path = model_dir.joinpath(*relative.parts)
        if path.is_symlink():
            raise TensorgateError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"{path} is a symbolic link; a load writes no file through "
                                  "one (replace it with a folder or file)")


def _mirror(source: Path, target: Path, folders: set[PurePosixPath],
            here: PurePosixPath) -> None:
    """`target` as `source`, by links to its entries; the folders the upload writes into are
    made for real (their own entries linked), so the upload lands beside, not through."""
    target.mkdir()
    if not source.is_dir():
        return
    for entry in source.iterdir():
        relative = here / entry.name
        if relative in folders and entry.is_dir():
            _mirror(entry, target / entry.name, folders, relative)
        else:
            (target / entry.name).symlink_to(entry.absolute())
