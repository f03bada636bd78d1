"""A load's files staged outside the repository, as Triton's override files: never written into it.

The staged model folder links to the model's files on disk and holds the new ones; the reloader
serves the versions loaded from it until an unload or a load without files.
"""

from __future__ import annotations

import shutil
import tempfile
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
    """A staged copy of `<repository>/<name>` with the upload in it, in a folder of its own
    (tempfile's) that the caller deletes once no version loaded from it is served."""
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
