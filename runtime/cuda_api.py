"""The few CUDA runtime calls CUDA shared memory needs (open and close an IPC handle, copy bytes),
through cuda-python where it is installed (as tritonclient's own helpers use it), else libcudart."""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
from pathlib import Path
from typing import Any, Protocol

#: The bytes of a cudaIpcMemHandle_t.
HANDLE_BYTES = 64
_LAZY_PEER_ACCESS = 1  # cudaIpcMemLazyEnablePeerAccess
_STREAM_NON_BLOCKING = 1  # cudaStreamNonBlocking
_MEMCPY_DEFAULT = 4  # cudaMemcpyDefault: the direction follows from the pointers (UVA)
_LIBRARIES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")
NO_LIBRARY = ("no CUDA runtime library for CUDA shared memory: install the gpu extra "
              "(pip install 'tensorgate[gpu]', which brings cuda-python)")


class CudaError(Exception):
    """A CUDA call that failed, by the call's and the error's names."""


class CudaApi(Protocol):
    """Pointers are plain integers; host and device ones alike (unified addressing)."""

    def device_count(self) -> int: ...

    def open(self, handle: bytes, device: int) -> tuple[int, int]:
        """Where the buffer behind ``handle`` is mapped, and how many bytes it holds."""
        ...

    def close(self, pointer: int, device: int) -> None: ...

    def copy(self, target: int, source: int, size: int, device: int) -> None:
        """Copy and wait for the copy, on a stream of its own that waits for no other work."""
        ...


class _Calls:
    """What both ways of calling the CUDA runtime share, given their `_call`."""

    def _call(self, name: str, *args: Any) -> Any:
        raise NotImplementedError

    def close(self, pointer: int, device: int) -> None:
        self._call("cudaSetDevice", device)
        self._call("cudaIpcCloseMemHandle", pointer)


class _Bindings(_Calls):
    """cuda-python: `cuda.bindings.runtime`, or the older `cuda.cudart`."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.streams: dict[int, Any] = {}

    def _call(self, name: str, *args: Any) -> Any:
        found = getattr(self.rt, name)(*args)
        err = found[0]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{name}: {self.rt.cudaGetErrorName(err)[1].decode()}")
        return found[1] if len(found) > 1 else None

    def device_count(self) -> int:
        return int(self._call("cudaGetDeviceCount"))

    def open(self, handle: bytes, device: int) -> tuple[int, int]:
        self._call("cudaSetDevice", device)
        ipc = self.rt.cudaIpcMemHandle_t()
        ipc.reserved = handle
        pointer = int(self._call("cudaIpcOpenMemHandle", ipc, _LAZY_PEER_ACCESS))
        return pointer, _mapped_bytes(self, pointer, device)

    def copy(self, target: int, source: int, size: int, device: int) -> None:
        self._call("cudaSetDevice", device)
        stream = self.streams.get(device)
        if stream is None:
            stream = self.streams[device] = self._call("cudaStreamCreateWithFlags",
                                                       _STREAM_NON_BLOCKING)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDefault
        self._call("cudaMemcpyAsync", target, source, size, kind, stream)
        self._call("cudaStreamSynchronize", stream)


class _Handle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * HANDLE_BYTES)]


class _Library(_Calls):
    """libcudart through ctypes, where cuda-python is not installed."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.cudaGetErrorName.restype = ctypes.c_char_p
        lib.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), _Handle,
                                             ctypes.c_uint]
        lib.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]
        lib.cudaMemcpyAsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                        ctypes.c_int, ctypes.c_void_p]
        lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
        self.streams: dict[int, ctypes.c_void_p] = {}

    def _call(self, name: str, *args: Any) -> None:
        err = getattr(self.lib, name)(*args)
        if err != 0:
            raise CudaError(f"{name}: {self.lib.cudaGetErrorName(err).decode()}")

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        self._call("cudaGetDeviceCount", ctypes.byref(count))
        return count.value

    def open(self, handle: bytes, device: int) -> tuple[int, int]:
        self._call("cudaSetDevice", device)
        pointer = ctypes.c_void_p()
        self._call("cudaIpcOpenMemHandle", ctypes.byref(pointer), _Handle(handle),
                   _LAZY_PEER_ACCESS)
        return int(pointer.value or 0), _mapped_bytes(self, int(pointer.value or 0), device)

    def copy(self, target: int, source: int, size: int, device: int) -> None:
        self._call("cudaSetDevice", device)
        stream = self.streams.get(device)
        if stream is None:
            stream = ctypes.c_void_p()
            self._call("cudaStreamCreateWithFlags", ctypes.byref(stream),
                       _STREAM_NON_BLOCKING)
            self.streams[device] = stream
        self._call("cudaMemcpyAsync", target, source, size, _MEMCPY_DEFAULT, stream)
        self._call("cudaStreamSynchronize", stream)


def _mapped_bytes(api: CudaApi, pointer: int, device: int) -> int:
    """The bytes from ``pointer`` to the end of its allocation, as the driver knows it (the
    handle does not say, and a register may claim no more); closes the mapping on a failure.
    Asked in the thread that opened it: that thread has the device's context current."""
    base, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
    try:
        found = ctypes.CDLL("libcuda.so.1").cuMemGetAddressRange_v2(
            ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(pointer))
    except OSError:
        found = -1
    if found != 0:
        api.close(pointer, device)
        raise CudaError(f"cuMemGetAddressRange: error {found}")
    return int(base.value + size.value - pointer)


def _library_paths() -> list[str]:
    """libcudart by its names, then in the NVIDIA wheels a CUDA build of torch brings."""
    paths = list(_LIBRARIES)
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except ModuleNotFoundError:
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        paths += [str(p) for p in sorted(Path(folder, "lib").glob("libcudart.so*"))]
    return paths


@functools.cache
def load() -> CudaApi | None:
    """The CUDA runtime as cuda-python or libcudart offers it; None where neither is here."""
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return _Bindings(importlib.import_module(module))
        except ImportError:
            continue
    for path in _library_paths():
        try:
            return _Library(ctypes.CDLL(path))
        except OSError:
            continue
    return None
