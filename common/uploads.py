"""The one rule for the files a repository load brings (`file:<version>/<name>` parameters).

The gateway and the runtime both check it before anything touches the disk, so an upload can
only ever name a file inside a version folder of the model it loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

from common.errors import invalid_argument
from common.names import is_name, is_version, shown

#: Most files one load may bring; a model version is a handful of files, not a tree.
MAX_UPLOAD_FILES = 64
#: Deepest path accepted below the version folder (e.g. `1/model/variables/data`).
MAX_UPLOAD_DEPTH = 8
FILE_PREFIX = "file:"
_EXPECTED = ("expected 'file:<version>/<name>', like file:1/model.onnx: a version number, then "
             "names of letters, digits, '_', '.' or '-' (no '..', no absolute path)")


def upload_path(key: str) -> PurePosixPath:
    """The relative path a `file:` parameter names, or INVALID_ARGUMENT saying the rule."""
    text = key[len(FILE_PREFIX):] if key.startswith(FILE_PREFIX) else key
    parts = text.split("/")
    if (not 2 <= len(parts) <= MAX_UPLOAD_DEPTH + 1 or not is_version(parts[0])
            or not all(is_name(part) for part in parts[1:])):
        raise invalid_argument(f"file parameter {shown(key)}: a path inside the model folder "
                               f"is {_EXPECTED}")
    return PurePosixPath(*parts)


def check_upload(keys: Iterable[str]) -> list[PurePosixPath]:
    """Every `file:` key of a load's parameters checked; at most MAX_UPLOAD_FILES of them."""
    paths = [upload_path(key) for key in keys if key.startswith(FILE_PREFIX)]
    if len(paths) > MAX_UPLOAD_FILES:
        raise invalid_argument(f"a load brings at most {MAX_UPLOAD_FILES} files; got "
                               f"{len(paths)}")
    return paths
