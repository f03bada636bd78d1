"""What system and CUDA shared-memory regions have in common: a table by scoped name, selection
by name or owner, leases checked against a region's size, and unregister waiting for its users."""

from __future__ import annotations

import asyncio
from typing import Generic, Protocol, TypeVar

import grpc

from common import regions
from common.errors import TensorgateError, invalid_argument, not_found

#: Regions one worker keeps at most, of each kind: each holds a mapping.
MAX_REGIONS = 1024
#: How long an unregister waits for the requests still using its regions.
UNREGISTER_WAIT_S = 30.0


class Held(Protocol):
    name: str  # as kept: `<owner>/<name>` from a gateway
    byte_size: int
    users: int
    removed: bool
    idle: asyncio.Event

    def shown(self) -> str: ...

    def close(self) -> None: ...


R = TypeVar("R", bound=Held)


class RegionTable(Generic[R]):
    """One kind's regions by name; `kind` names it in errors ("shared memory")."""

    kind = "shared memory"

    def __init__(self) -> None:
        self.table: dict[str, R] = {}

    def select(self, name: str) -> list[R]:
        """The regions `name` selects: one by name, all ("") or all of an owner ("<owner>/")."""
        regions.check_region(name)
        if not name:
            return list(self.table.values())
        if name.endswith("/"):
            return [r for r in self.table.values() if r.name.startswith(name)]
        found = self.table.get(name)
        if found is None:
            raise not_found(f"no {self.kind} region '{regions.unscoped(name)}' is registered")
        return [found]

    async def unregister(self, name: str, wait_s: float = UNREGISTER_WAIT_S) -> None:
        """Remove the regions at once (no new request may name them); close each once the
        requests already using it are done, and answer then, or DEADLINE_EXCEEDED past
        `wait_s`."""
        chosen = self.select(name)
        for region in chosen:
            del self.table[region.name]
            region.removed = True
            if not region.users:
                region.close()
        busy = [r for r in chosen if not r.idle.is_set()]
        if not busy:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(r.idle.wait() for r in busy)), wait_s)
        except TimeoutError:
            users = sum(r.users for r in busy)
            raise TensorgateError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"unregistered, but {users} requests still using the region "
                                  f"had not finished after {wait_s:g} s; their outputs may "
                                  "still be written into it") from None

    def checked(self, name: str, offset: int, byte_size: int, what: str) -> R:
        """The region `name`, checked to hold [offset, offset + byte_size)."""
        region = self.table.get(name)
        if region is None:
            raise not_found(f"{what}: no {self.kind} region '{regions.unscoped(name)}' is "
                            "registered")
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise invalid_argument(f"{what}: offset {offset} + byte_size {byte_size} is outside "
                                   f"{region.shown()} ({region.byte_size} bytes)")
        return region

    def release(self, region: R) -> None:
        region.users -= 1
        if not region.users and region.removed:
            region.close()

    def close(self) -> None:
        for region in self.table.values():
            region.close()
        self.table.clear()
