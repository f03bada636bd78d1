"""The client's CUDA regions: tritonclient's own helpers, or where they cannot be imported (they
need cuda-python below 13) the same functions over libcudart through ctypes, so the GPU tests run
on a machine whose PyTorch brings libcudart but no cuda-python."""

from __future__ import annotations

import base64
import ctypes
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from runtime.cuda_api import HANDLE_BYTES, _library_paths
from tests.integration import shm_client  # noqa: F401  (its pkg_resources shim, for tritonclient)

_DEFAULT = 4  # cudaMemcpyDefault


@dataclass
class Region:
    name: str
    pointer: ctypes.c_void_p
    byte_size: int
    device_id: int
    handle: bytes


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"{what}: CUDA error {code}")


def _over(lib: ctypes.CDLL) -> SimpleNamespace:
    lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.cudaFree.argtypes = [ctypes.c_void_p]

    def create_shared_memory_region(name: str, byte_size: int, device_id: int) -> Region:
        _check(lib.cudaSetDevice(device_id), "cudaSetDevice")
        pointer = ctypes.c_void_p()
        _check(lib.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(byte_size)), "cudaMalloc")
        handle = (ctypes.c_char * HANDLE_BYTES)()
        _check(lib.cudaIpcGetMemHandle(handle, pointer), "cudaIpcGetMemHandle")
        return Region(name, pointer, byte_size, device_id, bytes(handle))

    def get_raw_handle(region: Region) -> bytes:
        return base64.b64encode(region.handle)

    def set_shared_memory_region(region: Region, values: list[np.ndarray]) -> None:
        data = b"".join(np.ascontiguousarray(v).tobytes() for v in values)
        _check(lib.cudaMemcpy(region.pointer, data, len(data), _DEFAULT), "cudaMemcpy")

    def get_contents_as_numpy(region: Region, dtype: Any, shape: list[int]) -> np.ndarray:
        out = np.empty(shape, dtype)
        _check(lib.cudaMemcpy(out.ctypes.data, region.pointer, out.nbytes, _DEFAULT),
               "cudaMemcpy")
        return out

    def destroy_shared_memory_region(region: Region) -> None:
        _check(lib.cudaFree(region.pointer), "cudaFree")

    return SimpleNamespace(**{f.__name__: f for f in (
        create_shared_memory_region, get_raw_handle, set_shared_memory_region,
        get_contents_as_numpy, destroy_shared_memory_region)})


def helpers() -> tuple[Any, str]:
    """tritonclient.utils.cuda_shared_memory, or the ctypes stand-in; (None, why) if neither."""
    try:
        import tritonclient.utils.cuda_shared_memory as found
    except (ImportError, RuntimeError) as exc:
        why = f"tritonclient's CUDA helpers: {exc}"
    else:
        return found, ""
    for path in _library_paths():
        try:
            return _over(ctypes.CDLL(path)), ""
        except OSError:
            continue
    return None, f"{why}; and no libcudart to stand in for them"
