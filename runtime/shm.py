"""Triton's system shared memory: the regions a runtime worker maps, and requests whose tensors
live in them (inputs read in place, outputs written there)."""

from __future__ import annotations

import asyncio
import mmap
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from common import regions
from common.errors import TensorgateError, invalid_argument, not_found
from common.names import shown
from common.wire import Buffer
from runtime.cuda_shm import CudaRegions
from runtime.region_table import MAX_REGIONS, RegionTable

#: Where POSIX shared-memory objects live: no key is opened anywhere else.
SHM_ROOT = Path("/dev/shm")


@dataclass(eq=False)
class Region:
    name: str  # as kept: `<owner>/<name>` from a gateway
    key: str
    offset: int
    byte_size: int
    fd: int
    mapping: mmap.mmap
    view: memoryview  # the region's bytes: [offset, offset + byte_size) of the object
    users: int = 0
    removed: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def shown(self) -> str:
        return f"shared memory region '{regions.unscoped(self.name)}'"

    def close(self) -> None:
        os.close(self.fd)
        try:
            self.view.release()
            self.mapping.close()
        except BufferError:
            pass  # NOTE: a batch's array still views it: the mapping goes with the last view
        self.idle.set()


def _int(parameter: Any) -> int:
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise invalid_argument(f"expected an integer parameter, got {kind or 'none'}")
    return int(getattr(parameter, kind))


class Regions(RegionTable[Region]):
    """The regions registered with this worker, by name; its CUDA regions in `cuda`."""

    def __init__(self, root: Path = SHM_ROOT, limit: int = MAX_REGIONS) -> None:
        super().__init__()
        self.root = root
        self.limit = limit
        #: Triton's CUDA shared memory, in the same namespace of region names.
        self.cuda = CudaRegions(self.table)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        regions.check_region(name)
        regions.check_key(key)
        what = f"shared memory region '{regions.unscoped(name)}'"
        if not name or name.endswith("/"):
            raise invalid_argument("a shared memory region to register needs a name")
        if name in self.table or name in self.cuda.table or name in self.cuda.opening:
            raise TensorgateError(grpc.StatusCode.ALREADY_EXISTS,
                                  f"{what} is already registered; unregister it first")
        if len(self.table) >= self.limit:
            raise TensorgateError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"{what}: this worker holds {self.limit} regions already; "
                                  "unregister some first")
        owner = name.rpartition("/")[0]
        if any(r.key == key and r.name.rpartition("/")[0] != owner for r in self.table.values()):
            raise TensorgateError(grpc.StatusCode.PERMISSION_DENIED,
                                  f"{what}: key {shown(key)} is registered by another caller")
        if offset < 0 or byte_size <= 0:
            raise invalid_argument(f"{what}: offset must be 0 or more and byte_size more than "
                                   f"0; got offset {offset}, byte_size {byte_size}")
        fd = self._open(what, key)
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise invalid_argument(f"{what}: offset {offset} + byte_size {byte_size} runs "
                                       f"past the end of {shown(key)} ({size} bytes)")
            mapping = mmap.mmap(fd, offset + byte_size)
        except BaseException:
            os.close(fd)
            raise
        view = memoryview(mapping)[offset:]
        self.table[name] = Region(name, key, offset, byte_size, fd, mapping, view)

    def _open(self, what: str, key: str) -> int:
        """The object's descriptor, read-write; never through a link, never other than a file."""
        path = self.root / key[1:]
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise not_found(f"{what}: no shared memory object {shown(key)} on the runtime "
                            "worker's host; a region must be created on the host the worker "
                            "runs on") from None
        except PermissionError:
            raise TensorgateError(grpc.StatusCode.PERMISSION_DENIED,
                                  f"{what}: the runtime worker may not open {shown(key)} for "
                                  "reading and writing") from None
        except OSError as exc:
            raise invalid_argument(f"{what}: {shown(key)} cannot be opened: "
                                   f"{exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise invalid_argument(f"{what}: {shown(key)} is not a shared memory object")
        return fd

    def close(self) -> None:
        super().close()
        self.cuda.close()

    def lease(self, name: str, offset: int, byte_size: int, what: str) -> tuple[Region, int]:
        """The region `name` checked to hold [offset, offset + byte_size), now in use by one
        more request; and where that span starts in its view."""
        region = self.checked(name, offset, byte_size, what)
        # NOTE: a shrunk object would fault (SIGBUS) on reading past its new end: looked at
        # again on every use, not only at register time.
        if os.fstat(region.fd).st_size < region.offset + region.byte_size:
            raise TensorgateError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"{what}: the object behind {region.shown()} was shrunk "
                                  "below the registered size; register it again")
        region.users += 1
        return region, offset

    def __iter__(self) -> Iterator[Region]:
        return iter(self.table.values())


def span(parameters: Any, what: str) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) that a tensor's parameters name, or None."""
    if regions.REGION not in parameters:
        return None
    region = parameters[regions.REGION]
    if region.WhichOneof("parameter_choice") != "string_param":
        raise invalid_argument(f"{what}: '{regions.REGION}' must be a string")
    if regions.BYTE_SIZE not in parameters:
        raise invalid_argument(f"{what}: '{regions.REGION}' needs '{regions.BYTE_SIZE}' too")
    try:
        size = _int(parameters[regions.BYTE_SIZE])
        offset = _int(parameters[regions.OFFSET]) if regions.OFFSET in parameters else 0
    except TensorgateError as exc:
        raise invalid_argument(f"{what}: '{regions.BYTE_SIZE}' and '{regions.OFFSET}': "
                               f"{exc.message}") from None
    return region.string_param, offset, size


Buffers = list[Buffer | None]
