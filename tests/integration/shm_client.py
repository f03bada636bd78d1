"""tritonclient's own system shared-memory helpers, importable where setuptools (81 and later)
no longer ships `pkg_resources`, which they use only to find their bundled libcshm.so."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any


def _resource_filename(package: str, name: str) -> str:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None
    return str(Path(spec.origin).parent / name)


if importlib.util.find_spec("pkg_resources") is None:
    _shim: Any = types.ModuleType("pkg_resources")
    _shim.resource_filename = _resource_filename
    sys.modules["pkg_resources"] = _shim

import tritonclient.utils.shared_memory as shm  # noqa: E402  (after the shim)

__all__ = ["shm"]
