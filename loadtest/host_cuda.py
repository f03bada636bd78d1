"""A stand-in CUDA runtime whose 'device memory' is host memory: the runtime's CUDA shared-memory
path (register, spans, gathers, output writes) run and timed on a machine without a GPU."""

from __future__ import annotations

import ctypes
import os

import numpy as np

from runtime import cuda_api
from runtime.cuda_api import CudaError
from runtime.cuda_shm import CudaRegions
from runtime.shm import Regions


class HostCuda:
    """CudaApi's calls over host arrays: each exported 'device buffer' is a numpy array, its
    handle 64 random bytes; copies are memmoves."""

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self.buffers: dict[bytes, np.ndarray] = {}
        self.closed: list[int] = []

    def export(self, size: int) -> tuple[bytes, np.ndarray]:
        handle = os.urandom(cuda_api.HANDLE_BYTES)
        self.buffers[handle] = np.zeros(size, np.uint8)
        return handle, self.buffers[handle]

    def device_count(self) -> int:
        return self.count

    def open(self, handle: bytes, device: int) -> tuple[int, int]:
        if handle not in self.buffers:
            raise CudaError("cudaIpcOpenMemHandle: cudaErrorInvalidResourceHandle")
        found = self.buffers[handle]
        return int(found.ctypes.data), found.nbytes

    def close(self, pointer: int, device: int) -> None:
        self.closed.append(pointer)

    def copy(self, target: int, source: int, size: int, device: int) -> None:
        ctypes.memmove(target, source, size)


def regions_with(cuda: HostCuda | None, devices: int = 1) -> Regions:
    """A worker's regions whose CUDA calls go to ``cuda`` (None: no CUDA runtime)."""
    regions = Regions()
    regions.cuda = CudaRegions(regions.table, api=lambda: cuda, devices=lambda: devices)
    return regions
