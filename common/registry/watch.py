"""The gateway's view of the registry: a snapshot, swapped whole when the generation moves.

Off the hot path: a low-rate poll of one integer, across processes, with reads kept off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from common.policy import EMPTY, Snapshot
from common.registry.store import Registry, RegistryError

log = logging.getLogger(__name__)


class RegistryWatcher:
    """Holds `snapshot`, the registry as last read; `run()` keeps it fresh.

    Every `interval` seconds it reads the generation counter and rebuilds the snapshot only when
    that moved. A database error keeps the old snapshot and is logged once until it changes.
    """

    def __init__(self, path: Path | None, interval: float = 0.5,
                 on_change: Callable[[Snapshot, Snapshot], Awaitable[None]] | None = None) -> None:
        self.path = path
        self.interval = interval
        #: Awaited with (old, new) after each swap, by `run()`.
        self.on_change = on_change
        self._error: str | None = None
        # NOTE: the connection moves between the loop's worker threads; the lock keeps a close()
        # from landing in the middle of a check still running in a thread after run() was cancelled.
        self._lock = threading.Lock()
        self._registry = None if path is None else Registry(path, check_same_thread=False)
        self.snapshot: Snapshot = EMPTY if self._registry is None else self._registry.snapshot()

    def refresh(self) -> bool:
        """Check the generation once; swap in a new snapshot if it moved. True when swapped."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> bool:
        if self._registry is None:
            return False
        try:
            if self._registry.generation() == self.snapshot.generation:
                self._recovered()
                return False
            snapshot = self._registry.snapshot()
        except (sqlite3.Error, RegistryError) as exc:
            message = f"{type(exc).__name__}: {exc}"
            if message != self._error:
                log.warning("registry %s unreadable, keeping generation %d: %s", self.path,
                            self.snapshot.generation, message)
                self._error = message
            return False
        self._recovered()
        self.snapshot = snapshot
        return True

    def _recovered(self) -> None:
        if self._error is not None:
            log.warning("registry %s readable again", self.path)
            self._error = None

    async def run(self) -> None:
        """Poll until cancelled; SQLite may wait on a lock, so each check runs in a thread."""
        if self._registry is None:
            return
        while True:
            await asyncio.sleep(self.interval)
            old = self.snapshot
            if await asyncio.to_thread(self.refresh) and self.on_change is not None:
                await self.on_change(old, self.snapshot)

    def close(self) -> None:
        with self._lock:
            if self._registry is not None:
                self._registry.close()
                self._registry = None
