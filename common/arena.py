"""Shared memory between a gateway and a runtime on one host: a sealed memfd carved into slots.

The owner writes a tensor's bytes into a slot and sends only (offset, length); the peer maps
the same memfd read-only (its fd came with the lane's hello) and reads them in place.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import fcntl
import mmap
import os
from collections.abc import Callable

#: Slots start on cache-line boundaries (numpy and the copies into a batch prefer it).
ALIGN = 64
#: A peer's memfd must be sealed against shrinking: a mapping past its end faults (SIGBUS).
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def supported() -> bool:
    """Whether this platform has memfds (Linux)."""
    return hasattr(os, "memfd_create")


class Allocator:
    """First fit over the free spans sorted by offset; a freed span merges with its neighbours,
    so mixed sizes never strand the arena in small pieces. Spans are as many as calls in
    flight at most, so the scan stays short."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free: list[tuple[int, int]] = [(0, size)] if size >= ALIGN else []
        #: The slots in use: offset → the bytes they hold (rounded up to ALIGN).
        self.live: dict[int, int] = {}
        self.used = 0

    def alloc(self, length: int) -> int | None:
        """The offset of a slot of at least ``length`` bytes; None when none is free."""
        need = max(ALIGN, -(-length // ALIGN) * ALIGN)
        for index, (start, room) in enumerate(self.free):
            if room >= need:
                if room == need:
                    del self.free[index]
                else:
                    self.free[index] = (start + need, room - need)
                self.live[start] = need
                self.used += need
                return start
        return None

    def release(self, start: int) -> bool:
        """Free the slot at ``start``; False (and nothing changed) if none is in use there."""
        need = self.live.pop(start, None)
        if need is None:
            return False
        self.used -= need
        free = self.free
        index = bisect.bisect(free, (start,))
        end = start + need
        if index < len(free) and free[index][0] == end:
            end += free[index][1]
            del free[index]
        if index and free[index - 1][0] + free[index - 1][1] == start:
            start = free[index - 1][0]
            index -= 1
            del free[index]
        free.insert(index, (start, end - start))
        return True


class Arena:
    """An arena this process owns: a sealed memfd mapped read-write, and its allocator."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, SEALS)
            self.map = mmap.mmap(self.fd, size)
        except OSError:
            os.close(self.fd)
            raise
        self.view = memoryview(self.map)
        self._base = _address(self.view)
        self.slots = Allocator(size)
        #: Called with (slots in use, bytes in use) after each change; for a gauge.
        self.on_change: Callable[[int, int], None] | None = None

    def alloc(self, length: int) -> int | None:
        start = self.slots.alloc(length)
        if start is not None and self.on_change is not None:
            self.on_change(len(self.slots.live), self.slots.used)
        return start

    def release(self, start: int) -> bool:
        freed = self.slots.release(start)
        if freed and self.on_change is not None:
            self.on_change(len(self.slots.live), self.slots.used)
        return freed

    def offset_of(self, data: object) -> int | None:
        """Where ``data`` starts in this arena when it is a view of it (an HTTP body written
        here as it arrived), else None."""
        if type(data) is not memoryview or data.obj is not self.map or not data.nbytes:
            return None
        try:
            return _address(data) - self._base
        except TypeError:  # NOTE: a read-only view of it: copied like any other tensor
            return None

    def close_fd(self) -> None:
        """The mapping stays; the fd is only needed to send the arena to a peer."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        self.close_fd()
        release_map(self.view, self.map)


class Mapping:
    """A peer's arena, mapped read-only from the fd it sent; ``view`` reads slots in place."""

    def __init__(self, fd: int, size: int) -> None:
        """Takes ``fd`` over (closed here, mapped or not); ValueError for an fd that is not a
        sealed memfd of at least ``size`` bytes."""
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            if seals & fcntl.F_SEAL_SHRINK == 0:
                raise ValueError("the peer's arena is not sealed against shrinking")
            if os.fstat(fd).st_size < size or size <= 0:
                raise ValueError(f"the peer's arena is smaller than the {size} bytes it claims")
            self.map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        except OSError as exc:
            raise ValueError(f"the peer's arena cannot be mapped: {exc.strerror}") from None
        finally:
            os.close(fd)
        self.size = size
        self.view = memoryview(self.map)

    def slice(self, start: int, length: int) -> memoryview:
        """The bytes at [start, start + length); ValueError for a span past the arena."""
        if start < 0 or length < 0 or start + length > self.size:
            raise ValueError(f"lane reference past the end of the arena: offset {start} + "
                             f"length {length} > {self.size} bytes")
        return self.view[start : start + length]

    def close(self) -> None:
        release_map(self.view, self.map)


def _address(view: memoryview) -> int:
    """The address of a writable view's first byte."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def release_map(view: memoryview, mapped: mmap.mmap) -> None:
    """Unmap now, or, while a batch still reads views of it, when the last view goes."""
    # NOTE: a view still exported (numpy reading a slot) refuses both; it holds the mmap
    # object, which unmaps itself once the last view is freed.
    with contextlib.suppress(BufferError, ValueError):
        view.release()
    with contextlib.suppress(BufferError):
        mapped.close()
