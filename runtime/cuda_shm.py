"""Triton's CUDA shared memory: device buffers a client exported with cudaIpcGetMemHandle, each
opened once by the worker at register, closed at unregister once no request uses it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Container
from dataclasses import dataclass, field

import grpc

from common import regions
from common.errors import TensorgateError, invalid_argument
from runtime import cuda_api
from runtime.backends.base import cuda_device_count
from runtime.cuda_api import HANDLE_BYTES, CudaApi, CudaError
from runtime.region_table import MAX_REGIONS, RegionTable

NO_GPU = "CUDA shared memory needs a GPU visible to the runtime: this runtime sees no CUDA GPU"


@dataclass(eq=False)
class CudaRegion:
    name: str  # as kept: `<owner>/<name>` from a gateway
    handle: bytes
    device_id: int
    byte_size: int
    pointer: int  # where the buffer is mapped in this process
    api: CudaApi
    users: int = 0
    removed: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def shown(self) -> str:
        return f"CUDA shared memory region '{regions.unscoped(self.name)}'"

    def close(self) -> None:
        # NOTE: a failure means the exporting process exited first: its memory is gone already
        with contextlib.suppress(CudaError):
            self.api.close(self.pointer, self.device_id)
        self.idle.set()


def check_register(name: str, handle: bytes, device_id: int, byte_size: int) -> str:
    """What describes the region in errors, once the request's own fields are well formed."""
    regions.check_region(name)
    what = f"CUDA shared memory region '{regions.unscoped(name)}'"
    if not name or name.endswith("/"):
        raise invalid_argument("a CUDA shared memory region to register needs a name")
    if len(handle) != HANDLE_BYTES:
        raise invalid_argument(f"{what}: raw_handle must be the {HANDLE_BYTES} bytes of a "
                               f"cudaIpcMemHandle_t; got {len(handle)} bytes")
    if device_id < 0:
        raise invalid_argument(f"{what}: device_id must be 0 or more; got {device_id}")
    if byte_size <= 0:
        raise invalid_argument(f"{what}: byte_size must be more than 0; got {byte_size}")
    return what


class CudaRegions(RegionTable[CudaRegion]):
    """The CUDA regions registered with this worker, by name; `others` holds the names of its
    system regions (Triton keeps one namespace for both kinds)."""

    kind = "CUDA shared memory"

    def __init__(self, others: Container[str], api: Callable[[], CudaApi | None] = cuda_api.load,
                 devices: Callable[[], int] = cuda_device_count,
                 limit: int = MAX_REGIONS) -> None:
        super().__init__()
        self.others = others
        self.api = api
        self.devices = devices
        self.limit = limit
        self.opening: set[str] = set()

    def available(self) -> bool:
        """Whether a GPU is visible and a CUDA runtime library loads (Server Metadata's
        `cuda_shared_memory`)."""
        return self.devices() > 0 and self.api() is not None

    async def register(self, name: str, handle: bytes, device_id: int, byte_size: int) -> None:
        what = check_register(name, handle, device_id, byte_size)
        self._check_free(name, handle, what)
        if self.devices() <= 0:
            raise TensorgateError(grpc.StatusCode.FAILED_PRECONDITION, NO_GPU)
        api = self.api()
        if api is None:
            raise TensorgateError(grpc.StatusCode.FAILED_PRECONDITION, cuda_api.NO_LIBRARY)
        self.opening.add(name)
        try:
            count = await asyncio.to_thread(api.device_count)
            if device_id >= count:
                raise invalid_argument(f"{what}: device_id {device_id} is not a GPU this "
                                       f"runtime sees: it sees {count} (0 to {count - 1})")
            # NOTE: in a thread: the first CUDA call of a process sets up its context (seconds)
            pointer, mapped = await asyncio.to_thread(api.open, handle, device_id)
        except CudaError as exc:
            raise invalid_argument(f"{what}: the handle cannot be opened on GPU {device_id} "
                                   f"({exc}); it must come from cudaIpcGetMemHandle in a live "
                                   "process on this host") from None
        finally:
            self.opening.discard(name)
        region = CudaRegion(name, bytes(handle), device_id, byte_size, pointer, api)
        if byte_size > mapped:
            region.close()
            raise invalid_argument(f"{what}: byte_size {byte_size} runs past the end of the GPU "
                                   f"buffer the handle names ({mapped} bytes)")
        self.table[name] = region

    def _check_free(self, name: str, handle: bytes, what: str) -> None:
        if name in self.table or name in self.others or name in self.opening:
            raise TensorgateError(grpc.StatusCode.ALREADY_EXISTS,
                                  f"{what} is already registered; unregister it first")
        if len(self.table) + len(self.opening) >= self.limit:
            raise TensorgateError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"{what}: this worker holds {self.limit} CUDA regions "
                                  "already; unregister some first")
        owner = name.rpartition("/")[0]
        for region in self.table.values():
            if region.handle != handle:
                continue
            if region.name.rpartition("/")[0] != owner:
                raise TensorgateError(grpc.StatusCode.PERMISSION_DENIED,
                                      f"{what}: its handle is registered by another caller")
            raise TensorgateError(grpc.StatusCode.ALREADY_EXISTS,
                                  f"{what}: its handle is registered already, as "
                                  f"{region.shown()}")

    def lease(self, name: str, offset: int, byte_size: int, what: str) -> CudaRegion:
        """The region `name` checked to hold [offset, offset + byte_size), now in use by one
        more request."""
        region = self.checked(name, offset, byte_size, what)
        region.users += 1
        return region
