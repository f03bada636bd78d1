"""What a PyTorch model file holds, told by its content: a TorchScript archive, a `torch.export`
program or an AOTInductor package (the two kinds of `.pt2`), checked against the file's name."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from common.model_config import ConfigError

TORCHSCRIPT, EXPORTED, AOTI = ("a TorchScript model", "a torch.export program",
                                "an AOTInductor package")
#: What each suffix must hold; other names (a `default_model_filename`) take any of them.
BY_SUFFIX = {".pt": (TORCHSCRIPT,), ".pt2": (EXPORTED, AOTI)}
_MAKERS = {TORCHSCRIPT: "torch.jit.save", EXPORTED: "torch.export.save",
           AOTI: "torch._inductor.aoti_compile_and_package"}
_NAMES = {TORCHSCRIPT: "model.pt", EXPORTED: "model.pt2", AOTI: "model.pt2"}


def _kind(names: list[str], archive: zipfile.ZipFile) -> str | None:
    """The format of a zip's entries (`<folder>/...`, as torch writes them), None if unknown."""
    inner = {name.partition("/")[2] for name in names}
    if "archive_format" in inner:
        top = next(n for n in names if n.partition("/")[2] == "archive_format")
        if archive.read(top).strip() == b"pt2":
            if any(n.startswith("data/aotinductor/") for n in inner):
                return AOTI
            if any(n.startswith("models/") and n.endswith(".json") for n in inner):
                return EXPORTED
        return None
    if "data.pkl" in inner and any(n.startswith("code/") for n in inner):
        return TORCHSCRIPT
    return None


def sniff(path: Path) -> str | None:
    """The format `path` holds, or None where it is none of the three."""
    try:
        with zipfile.ZipFile(path) as archive:
            return _kind(archive.namelist(), archive)
    except (zipfile.BadZipFile, OSError, KeyError):
        return None


def check_format(path: Path) -> str:
    """The file's format, refused where its name promises another one or where it is none."""
    found = sniff(path)
    allowed = BY_SUFFIX.get(path.suffix)
    if allowed is None and found is None:
        return TORCHSCRIPT  # NOTE: an unusual name keeps TorchScript's loader and its error
    if found is None:
        expected = " or ".join(f"{k} (written by {_MAKERS[k]})" for k in allowed or ())
        raise ConfigError(f"{path}: not a PyTorch model this runtime reads: expected {expected}")
    if allowed is not None and found not in allowed:
        raise ConfigError(f"{path}: the file holds {found}, which is served from a file "
                          f"named {_NAMES[found]}; rename it")
    return found


def aoti_device(path: Path) -> str:
    """The device kind ('cpu', 'cuda') an AOTInductor package was compiled for."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith("_metadata.json") and "/data/aotinductor/" in name:
                found = json.loads(archive.read(name)).get("AOTI_DEVICE_KEY")
                if isinstance(found, str) and found:
                    return found
    raise ConfigError(f"{path}: the AOTInductor package does not say which device it was "
                      "compiled for (no AOTI_DEVICE_KEY in its metadata); compile it again "
                      "with torch._inductor.aoti_compile_and_package")
