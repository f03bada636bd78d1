"""The gateway's view of the registry: a snapshot, swapped whole when the generation moves.

Off the hot path: a low-rate poll of one integer, across processes, with reads kept off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from common.policy import EMPTY, Snapshot
from common.registry.retire import folder_gone, sweep_missing, sweep_stale
from common.registry.store import Registry, RegistryError

log = logging.getLogger(__name__)

#: The shortest time between two refreshes asked for off the poll (an unknown API key).
EAGER_REFRESH_S = 0.1


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def stale(snapshot: Snapshot) -> bool:
    """True when a registered model's traffic or production alias names a version not ready."""
    for model, policy in snapshot.traffic.items():
        ready = snapshot.ready.get(model)
        named = {version for version, _ in policy.weights} | {policy.shadow_version or ""}
        if ready is not None and not named - {""} <= set(ready):
            return True
    return any(model in snapshot.ready and version not in snapshot.ready[model]
               for model, version in snapshot.production.items())


class RegistryWatcher:
    """Holds `snapshot`, the registry as last read; `run()` keeps it fresh.

    Every `interval` seconds it reads the generation counter and rebuilds the snapshot only when
    that moved. A database error keeps the old snapshot and is logged once until it changes.
    The file it opened is watched too: deleted or replaced, the snapshot stays the last good one,
    `problem` says so (the admin API refuses calls) and `on_state(False)` is called, until the
    very same file is back.
    """

    def __init__(self, path: Path | None, interval: float = 0.5,
                 on_change: Callable[[Snapshot, Snapshot], Awaitable[None]] | None = None,
                 on_state: Callable[[bool], None] | None = None,
                 repository: Path | None = None, sweep: bool = False) -> None:
        self.path = path
        #: Keep routing true: aliases and traffic naming a version that is not ready are
        #: released (audited), so nothing routes to nowhere. One process's job: the gateway's.
        self.sweep = sweep
        #: With `sweep`, the local model repository: a ready version whose folder is gone is
        #: marked failed (and released). None: folders are not looked at.
        self.repository = repository
        self.interval = interval
        #: Awaited with (old, new) after each swap, by `run()`.
        self.on_change = on_change
        #: Called with False when the file goes missing or is replaced, with True when it is back.
        self.on_state = on_state
        #: Why the registry cannot be trusted now (its file deleted or replaced); None: it can.
        self.problem: str | None = None
        self._error: str | None = None
        self._eager_at = 0.0
        # NOTE: the connection moves between the loop's worker threads; the lock keeps a close()
        # from landing in the middle of a check still running in a thread after run() was cancelled.
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._registry = None if path is None else Registry(path, check_same_thread=False)
        self._identity = None if path is None else file_identity(path)
        self.snapshot: Snapshot = EMPTY if self._registry is None else self._registry.snapshot()
        if on_state is not None:
            on_state(True)

    def refresh(self) -> bool:
        """Check the generation once; swap in a new snapshot if it moved. True when swapped."""
        with self._lock:
            return self._refresh()

    def refresh_if_due(self) -> bool:
        """`refresh()` now unless one ran in the last EAGER_REFRESH_S or one is running: what a
        caller with an unknown key may cost, so unknown keys cannot keep the database busy."""
        now = time.monotonic()
        if now - self._eager_at < EAGER_REFRESH_S or not self._lock.acquire(blocking=False):
            return False
        try:
            self._eager_at = now
            return self._refresh(sweep=False)  # NOTE: on the caller's loop: reads only
        finally:
            self._lock.release()

    def check_file(self) -> str | None:
        """Look at the registry's file now: why it cannot be trusted (deleted, replaced), or None.

        Logs the change and calls `on_state` when the answer changes.
        """
        if self.path is None:
            return None
        identity = file_identity(self.path)
        problem = None
        if identity is None:
            problem = f"registry file {self.path} was deleted"
        elif identity != self._identity:
            problem = f"registry file {self.path} was replaced (another file is in its place)"
        with self._state_lock:  # NOTE: the poll and admin calls look from different threads
            if problem != self.problem:
                self._report(problem)
        return problem

    def _report(self, problem: str | None) -> None:
        """Log a change of the file's state once, and tell `on_state`."""
        if problem is not None:
            log.error("%s; serving the last good snapshot (generation %d) and refusing admin "
                      "calls until it is back (restart to adopt a new file)", problem,
                      self.snapshot.generation)
        else:
            log.warning("registry file %s is back", self.path)
        self.problem = problem
        if self.on_state is not None:
            self.on_state(problem is None)

    def _refresh(self, sweep: bool = True) -> bool:
        if self._registry is None or self.check_file() is not None:
            return False
        try:
            if sweep:
                self._sweep(self._registry)
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

    def _sweep(self, registry: Registry) -> None:
        """A few stat() calls and dict lookups a poll; writes only when something is stale."""
        repository = self.repository
        if not self.sweep:
            return
        if repository is not None and any(
                folder_gone(repository, model, version)
                for model, versions in self.snapshot.ready.items() for version in versions):
            for label in sweep_missing(registry, repository):
                log.error("version %s was ready but its folder in %s is gone: its aliases and "
                          "traffic were released and it is marked failed (see the audit log)",
                          label, repository)
        if stale(self.snapshot):
            for label in sweep_stale(registry):
                log.error("version %s is not ready: the aliases and traffic naming it were "
                          "released (see the audit log)", label)

    def _recovered(self) -> None:
        if self._error is not None:
            log.warning("registry %s readable again", self.path)
            self._error = None

    async def refresh_now(self) -> None:
        """One refresh off the loop, with `on_change` as `run()` calls it: after a write here."""
        old = self.snapshot
        if await asyncio.to_thread(self.refresh) and self.on_change is not None:
            await self.on_change(old, self.snapshot)

    async def run(self) -> None:
        """Poll until cancelled; SQLite may wait on a lock, so each check runs in a thread."""
        if self._registry is None:
            return
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh_now()

    def close(self) -> None:
        with self._lock:
            if self._registry is not None:
                self._registry.close()
                self._registry = None
