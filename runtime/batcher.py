"""The dynamic batcher: a bounded queue and the rule that forms a batch, driven by a given clock.

Triton's semantics: requests of one model version in arrival order, up to `max_batch_size` rows
counting each request's own batch dimension, only equal non-batch shapes together; a batch that
reaches a preferred size goes at once, any other waits at most `max_queue_delay` after its oldest.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import grpc

from common.errors import TensorgateError
from runtime.device_rows import DeviceSpan, Hold, Part
from runtime.promise import Promise


@dataclass(eq=False)
class Timing:
    """When a traced request's batch ran (scheduler clock) and what it held; only for tracing."""

    arrival: float
    launched: float = 0.0
    done: float = 0.0
    rows: int = 0
    input_ns: int = 0
    infer_ns: int = 0


@dataclass(slots=True, eq=False)
class Pending:
    """One queued request: its input bytes in signature order and what its answer needs."""

    inputs: list[Part]
    shapes: list[tuple[int, ...]]
    batch_size: int
    #: The non-batch shapes of every input: only equal keys share a batch.
    shape_key: tuple
    arrival: float
    deadline: float | None
    #: Set when its batch has run: a loop future, or a Promise whose callback runs at once.
    future: asyncio.Future | Promise
    outputs: tuple[str, ...] = ()
    timing: Timing | None = None
    #: Some input is a DeviceSpan or some output goes to a CUDA region (`places`): its batch
    #: has GPU work of its own in the executor.
    device: bool = False
    #: Output name → the span of a CUDA region it is written to.
    places: dict[str, DeviceSpan] | None = None
    #: With `device`: told when its batch is launched and when it is done.
    hold: Hold | None = None


@dataclass
class Take:
    """What one look at the queue gives: a batch to run, expired requests, when to look again."""

    batch: list[Pending]
    expired: list[Pending]
    wake_at: float | None = None


class Batcher:
    def __init__(
        self,
        max_batch_size: int,
        max_queue_delay_s: float,
        preferred: tuple[int, ...],
        max_queue_size: int,
        batching: bool,
    ) -> None:
        self.max_rows = max(1, max_batch_size)
        self.delay = max_queue_delay_s
        self.preferred = frozenset(preferred)
        self.ready_rows = max(preferred) if preferred else self.max_rows
        self.max_queue_size = max_queue_size
        self.batching = batching and max_batch_size > 0
        self.queue: deque[Pending] = deque()

    def __len__(self) -> int:
        return len(self.queue)

    def put(self, item: Pending, what: str) -> None:
        if len(self.queue) >= self.max_queue_size:
            raise TensorgateError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{what}: queue is full ({self.max_queue_size} requests waiting); retry later",
            )
        self.queue.append(item)

    def take(self, now: float) -> Take:
        """Form the next batch if it is ready; leave the queue as it was otherwise."""
        expired = self._drop_dead(now)
        if not self.queue:
            return Take([], expired)
        head = self.queue[0]
        if not self.batching:
            self.queue.popleft()
            return Take([head], expired)
        batch, rows, full, cut = self._gather(head.shape_key)
        wake_at = head.arrival + self.delay
        late = self.delay > 0 and now >= wake_at
        if cut and not late:
            batch = batch[:cut]
        elif not (full or late or rows >= self.ready_rows or self.delay == 0):
            return Take([], expired, wake_at)
        self._remove(batch)
        return Take(batch, expired)

    def _remove(self, batch: list[Pending]) -> None:
        """Take `batch` off the queue: from its front when it is the front (one shape queued,
        as usual), else item by item."""
        queue, count = self.queue, len(batch)
        if count == len(queue):
            queue.clear()
        elif queue[count - 1] is batch[-1] and queue[0] is batch[0] and all(
                queue[i] is item for i, item in enumerate(batch)):
            for _ in range(count):
                queue.popleft()
        else:
            chosen = set(map(id, batch))
            self.queue = deque(item for item in queue if id(item) not in chosen)

    def _gather(self, key: tuple) -> tuple[list[Pending], int, bool, int]:
        """The queued requests of shape `key` that fit one batch, their rows, whether the batch
        is full, and how many of them make the largest preferred batch (0: none yet)."""
        batch: list[Pending] = []
        rows = cut = 0
        for item in self.queue:
            if item.shape_key != key:
                continue
            grown = rows + item.batch_size
            if grown > self.ready_rows and not cut:
                cut = len(batch)  # past every preferred size: as close as these requests get
            if grown > self.max_rows:
                return batch, rows, True, cut
            batch.append(item)
            rows = grown
            if rows in self.preferred:
                cut = len(batch)
            if rows == self.max_rows:
                return batch, rows, True, cut
        return batch, rows, False, cut

    def _drop_dead(self, now: float) -> list[Pending]:
        """Remove cancelled requests and those past their deadline; return the expired ones."""
        expired: list[Pending] = []
        queue = self.queue
        for i in queue:  # NOTE: a loop, not any() of a generator: this runs on every look
            if i.future.done() or (i.deadline is not None and i.deadline <= now):
                break
        else:
            return expired
        keep: deque[Pending] = deque()
        for item in queue:
            if item.future.done():
                continue
            if item.deadline is not None and item.deadline <= now:
                expired.append(item)
            else:
                keep.append(item)
        self.queue = keep
        return expired
