"""The quota stage: per caller, a token bucket (requests/s, burst) and a cap on requests in flight.

The counters live in a fixed table in a memory-mapped file the host's gateway processes share.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc

from common.errors import TensorgateError
from common.policy import Principal
from gateway.auth import describe

MAGIC = b"TGQUOTA1"
HEADER = struct.Struct("<8sq16s")  # magic, slot count, boot id
HEADER_SIZE = 64  # also the byte range locked while slots are claimed
SLOT_SIZE = 48
DIGEST_SIZE = 16
#: A slot after its subject's digest: tokens, last refill, requests in flight, time the bucket
#: is full again (float64, float64, int64, float64).
STATE = struct.Struct("<ddqd")
IN_FLIGHT = struct.Struct("<q")
IN_FLIGHT_AT = DIGEST_SIZE + 16
EMPTY = bytes(DIGEST_SIZE)
DIGEST_CACHE_SIZE = 4096


class QuotaExceeded(TensorgateError):
    """RESOURCE_EXHAUSTED over a quota; `limit` ("rate", "concurrency", "table") labels metrics."""

    def __init__(self, message: str, retry_after: float, limit: str) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after=retry_after)
        self.limit = limit


class Ticket:
    """An admitted request; hand it back to `Quotas.release` once, in the request's `finally`."""

    __slots__ = ("released", "slot")

    def __init__(self, slot: int) -> None:
        self.slot = slot  # byte offset of the slot whose in-flight count it holds; -1: none
        self.released = False


#: The ticket of a request that holds no in-flight count; releasing it does nothing.
FREE = Ticket(-1)


def burst_of(principal: Principal) -> int:
    return principal.burst if principal.burst > 0 else max(1, math.ceil(principal.rate))


def _boot_id() -> bytes:
    """Monotonic times are only comparable within one boot; a table from an earlier one resets."""
    try:
        return uuid.UUID(Path("/proc/sys/kernel/random/boot_id").read_text().strip()).bytes
    except (OSError, ValueError):
        return bytes(16)


class Quotas:
    """Token buckets and in-flight caps keyed by `Principal.subject`, shared through a file.

    Layout: a 64-byte header, then `slots` slots of 48 bytes: the subject's 16-byte blake2b
    digest, then STATE. Slots are found by open addressing (linear probing from the digest's
    hash); the digest in the slot tells subjects apart, so two subjects never share a counter.
    A slot whose bucket is full again and holds no request in flight is as good as new, so a
    newcomer may take it over in place (probe chains never break: slots never become empty).
    When no slot is free the caller is refused with RESOURCE_EXHAUSTED, never merged.

    Locking: a slot is read and written under a POSIX byte-range lock on its 48 bytes
    (`fcntl.lockf`), so different callers rarely contend; claiming a slot also holds the lock
    on the header. POSIX locks belong to a process, so a threading lock orders this process's
    own threads; use one Quotas per file per process. With `path` None the table is an
    anonymous mapping and the limits hold per process.
    """

    def __init__(
        self, path: Path | None, slots: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if slots < 1:
            raise ValueError("a quota table needs at least one slot")
        self.slots = slots
        self._clock = clock
        self._mutex = threading.Lock()
        self._digests: dict[str, bytes] = {}
        size = HEADER_SIZE + slots * SLOT_SIZE
        if path is None:
            self._fd = -1
            self._map = mmap.mmap(-1, size)
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                self._lock(0, HEADER_SIZE)
                try:
                    self._prepare(path, size)
                finally:
                    self._unlock(0, HEADER_SIZE)
                self._map = mmap.mmap(self._fd, size)
            except BaseException:
                os.close(self._fd)
                raise

    def admit(self, principal: Principal) -> Ticket:
        """Count one request against the principal's limits, or raise QuotaExceeded.

        A refused request takes no token and holds no in-flight count.
        """
        if principal.rate <= 0 and principal.concurrency <= 0:
            return FREE
        digest = self._digest(principal.subject)
        with self._mutex:
            slot = self._lock_slot(digest, principal)
            try:
                # NOTE: read the clock under the lock, so that the times written to a slot only
                # move forward; a time read before waiting could rewind `last` and grant twice.
                refused = self._charge(slot, principal, self._clock())
            finally:
                self._unlock(slot, SLOT_SIZE)
        if refused is not None:
            raise refused
        return Ticket(slot) if principal.concurrency > 0 else FREE

    def release(self, ticket: Ticket) -> None:
        """Give back the in-flight count an admitted request holds; a second call does nothing."""
        if ticket.slot < 0 or ticket.released:
            return
        ticket.released = True
        at = ticket.slot + IN_FLIGHT_AT
        with self._mutex:
            self._lock(ticket.slot, SLOT_SIZE)
            try:
                (in_flight,) = IN_FLIGHT.unpack_from(self._map, at)
                IN_FLIGHT.pack_into(self._map, at, max(0, in_flight - 1))
            finally:
                self._unlock(ticket.slot, SLOT_SIZE)

    def close(self) -> None:
        self._map.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _charge(self, slot: int, principal: Principal, now: float) -> QuotaExceeded | None:
        """Refill the bucket, then take a token and an in-flight count, or neither."""
        rate, cap = principal.rate, principal.concurrency
        tokens, last, in_flight, _ = STATE.unpack_from(self._map, slot + DIGEST_SIZE)
        burst = burst_of(principal)
        if rate > 0:
            tokens = min(burst, tokens + max(0.0, now - last) * rate)
        now = max(now, last)  # a clock that steps back must not grant the same time twice
        refused: QuotaExceeded | None = None
        if cap > 0 and in_flight >= cap:
            refused = QuotaExceeded(
                f"{describe(principal.subject)} has {in_flight} requests in flight, its limit",
                1.0, "concurrency")
        elif rate > 0 and tokens < 1.0:
            wait = (1.0 - tokens) / rate
            refused = QuotaExceeded(
                f"{describe(principal.subject)} is over its rate of {rate:g} requests/s; "
                f"retry after {wait:.3g} s", wait, "rate")
        else:
            if rate > 0:
                tokens -= 1.0
            if cap > 0:
                in_flight += 1
        full_at = now + (burst - tokens) / rate if rate > 0 else now
        STATE.pack_into(self._map, slot + DIGEST_SIZE, tokens, now, in_flight, full_at)
        return refused

    def _lock_slot(self, digest: bytes, principal: Principal) -> int:
        """The offset of the subject's slot, locked; claims one when the subject has none."""
        home = int.from_bytes(digest[8:], "little") % self.slots
        for i in range(self.slots):
            slot = HEADER_SIZE + ((home + i) % self.slots) * SLOT_SIZE
            found = self._map[slot:slot + DIGEST_SIZE]
            if found == digest:
                self._lock(slot, SLOT_SIZE)
                # NOTE: read unlocked above; a claimer may have taken the slot over meanwhile.
                if self._map[slot:slot + DIGEST_SIZE] == digest:
                    return slot
                self._unlock(slot, SLOT_SIZE)
                break
            if found == EMPTY:
                break
        self._lock(0, HEADER_SIZE)
        try:
            return self._claim(digest, home, principal, self._clock())
        finally:
            self._unlock(0, HEADER_SIZE)

    def _claim(self, digest: bytes, home: int, principal: Principal, now: float) -> int:
        """Under the header lock (all digest writes happen under it): find or take a slot."""
        idle: list[int] = []
        empty = -1
        for i in range(self.slots):
            slot = HEADER_SIZE + ((home + i) % self.slots) * SLOT_SIZE
            found = self._map[slot:slot + DIGEST_SIZE]
            if found == digest:
                self._lock(slot, SLOT_SIZE)
                return slot
            if found == EMPTY:
                empty = slot
                break
            _, _, in_flight, full_at = STATE.unpack_from(self._map, slot + DIGEST_SIZE)
            if in_flight == 0 and now >= full_at:
                idle.append(slot)
        for slot in (*idle, empty):
            if slot < 0:
                continue
            self._lock(slot, SLOT_SIZE)
            _, _, in_flight, full_at = STATE.unpack_from(self._map, slot + DIGEST_SIZE)
            if slot == empty or (in_flight == 0 and now >= full_at):
                # A full bucket (tokens = inf is clipped to the burst) and nothing in flight.
                self._map[slot:slot + DIGEST_SIZE] = digest
                STATE.pack_into(self._map, slot + DIGEST_SIZE, math.inf, now, 0, now)
                return slot
            self._unlock(slot, SLOT_SIZE)
        raise QuotaExceeded(
            f"the quota table is full ({self.slots} callers): cannot count "
            f"{describe(principal.subject)}; retry later", 1.0, "table")

    def _prepare(self, path: Path, size: int) -> None:
        """Under the header lock: size a new file, or check an existing one is this table."""
        boot = _boot_id()
        existing = os.fstat(self._fd).st_size
        if existing == 0:
            os.ftruncate(self._fd, size)
        else:
            magic, slots, file_boot = HEADER.unpack(os.pread(self._fd, HEADER.size, 0))
            if magic != MAGIC or slots != self.slots or existing != size:
                raise ValueError(f"{path} is not a quota table of {self.slots} slots; "
                                 "give every gateway the same slot count, or remove the file")
            if file_boot == boot:
                return
            # Left from an earlier boot: its monotonic times mean nothing now.
            os.pwrite(self._fd, bytes(size - HEADER_SIZE), HEADER_SIZE)
        os.pwrite(self._fd, HEADER.pack(MAGIC, self.slots, boot), 0)

    def _digest(self, subject: str) -> bytes:
        digest = self._digests.get(subject)
        if digest is None:
            if len(self._digests) >= DIGEST_CACHE_SIZE:
                self._digests.clear()
            digest = hashlib.blake2b(subject.encode(), digest_size=DIGEST_SIZE).digest()
            self._digests[subject] = digest
        return digest

    def _lock(self, start: int, length: int) -> None:
        if self._fd >= 0:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, length, start)

    def _unlock(self, start: int, length: int) -> None:
        if self._fd >= 0:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, length, start)
