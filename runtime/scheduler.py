"""The runtime's data path, in order: validate → queue → batch → execute → split → respond.

One Scheduler per model version; it owns the queue and one executor thread per model instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import grpc

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from runtime.batcher import Batcher, Pending, Timing
from runtime.decode import InferCall
from runtime.executor import BatchResult, Output, Staging, execute
from runtime.metrics import ModelMetrics, default_metrics
from runtime.model import ServedModel
from runtime.promise import Promise
from runtime.response import build_response, select
from runtime.validate import Checked, check

log = logging.getLogger("tensorgate.runtime")


@dataclass(slots=True, eq=False)
class Ticket:
    """One queued request: its future is done when its batch has run (Scheduler.outputs)."""

    scheduler: Scheduler
    message: Any
    checked: Checked
    arrival: float
    future: asyncio.Future | Promise


class Scheduler:
    """Forms batches when an instance is free and runs them.

    A batch runs in its instance's executor thread, unless a full batch of the model took less
    than `inline_ns` at warm-up: then it runs on the event loop itself, since handing a batch to
    a thread and back costs two thread wake-ups, more than such a model's whole compute.
    """

    def __init__(self, model: ServedModel, clock: Callable[[], float] = time.monotonic,
                 inline_ns: int = 0, metrics: ModelMetrics | None = None) -> None:
        config = model.config
        batching = config.dynamic_batching
        self.model = model
        self.clock = clock
        self.metrics = metrics or default_metrics().model(model.name, str(model.version))
        self.batcher = Batcher(
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=(batching.max_queue_delay_microseconds / 1e6 if batching else 0.0),
            preferred=batching.preferred_batch_size if batching else (),
            max_queue_size=batching.max_queue_size if batching else 4096,
            batching=batching is not None,
        )
        self.default_timeout = batching.default_timeout_microseconds / 1e6 if batching else 0.0
        # A backend that keeps several batches in flight (a GPU's copies overlapping its
        # compute) gets a slot, with its own thread and buffers, for each.
        self.free = [
            (backend, ThreadPoolExecutor(1, thread_name_prefix=f"{model.name}-{model.version}"),
             Staging(config.max_batch_size))
            for backend in model.backends
            for _ in range(getattr(backend, "pipeline_depth", 1))
        ]
        self._pool = list(self.free)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: A look at the queue is due: requests put in this turn of the loop share it.
        self._look_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # The latest wake-up time whose timer has fired. Event-loop timers may fire up to a
        # millisecond early (uvloop rounds to ms); a fired timer counts as that time reached.
        self._due = 0.0
        self.inline = model.warmup_ns < inline_ns

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def publish_metrics(self) -> None:
        """Bring the counters derived from the statistics (Triton's names) up to date."""
        self.metrics.publish(self.model.stats, len(self.batcher))

    async def stop(self) -> None:
        self.publish_metrics()  # the last counts of a version going away
        self._loop = None
        if self._timer is not None:
            self._timer.cancel()
        for _, pool, _ in self._pool:
            pool.shutdown(wait=False, cancel_futures=True)

    def enqueue(self, call: InferCall, timeout: float | None,
                timing: Timing | None = None, direct: bool = False) -> Ticket:
        """Check a request and queue it; its ticket's future is done when its batch has run.
        Raises TensorgateError for a request that does not fit or a full queue.

        With `timing` (a traced request), the batch that ran it is noted there. With `direct`,
        the future is a Promise: its one callback runs as the batch completes.
        """
        checked = check(call, self.model)
        now = self.clock()
        if self.default_timeout and (timeout is None or timeout > self.default_timeout):
            timeout = self.default_timeout
        future = Promise() if direct else (self._loop or asyncio.get_running_loop()).create_future()
        if timing is not None:
            timing.arrival = now
        item = Pending(checked.inputs, checked.shapes, checked.batch_size, checked.shape_key,
                       now, None if timeout is None else now + timeout, future, checked.outputs,
                       timing, call.device, call.places, call.hold)
        self.batcher.put(item, self.model.label)
        self._look()  # which also sets the queue depth gauge
        return Ticket(self, call.message, checked, now, future)

    def outputs(self, ticket: Ticket) -> list[Output]:
        """A done ticket's outputs, as its request asked for them; counts the request as a
        success or raises (and counts) its failure. CancelledError for a cancelled one."""
        error = ticket.future.exception()
        if error is not None:
            if isinstance(error, TensorgateError):
                self.model.stats.fail.add(int((self.clock() - ticket.arrival) * 1e9))
                self.metrics.failed(error)
            raise error
        # NOTE: the histogram was observed for the whole batch at once (_complete).
        self.model.stats.success.add(int((self.clock() - ticket.arrival) * 1e9))
        checked = ticket.checked
        return select(self.model, ticket.future.result(), checked.outputs, checked.classes)

    async def infer(self, call: InferCall, timeout: float | None,
                    timing: Timing | None = None) -> pb.ModelInferResponse:
        """The whole runtime path of one request; raises TensorgateError on any failure."""
        ticket = self.enqueue(call, timeout, timing)
        with contextlib.suppress(TensorgateError):  # NOTE: raised, and counted, by outputs()
            await cast(asyncio.Future, ticket.future)  # NOTE: a loop future without `direct`
        return build_response(call.message, self.model, self.outputs(ticket))

    def _look(self) -> None:
        """Look at the queue once the callbacks already due have run, so requests that arrived
        together (one read of the lane) form one batch."""
        if not self._look_due and self._loop is not None:
            self._look_due = True
            self._loop.call_soon(self._dispatch_ready)

    def _dispatch_ready(self) -> None:
        if self._loop is None:
            self._look_due = False
            return  # stopped
        try:
            self._take_batches()
        finally:
            # NOTE: cleared only now: a look asked for while taking (an inline batch frees its
            # instance) is this one, already under way.
            self._look_due = False
            # NOTE: once per look, not per request: taking drains several requests at once.
            self.metrics.depth.set(len(self.batcher))

    def _take_batches(self) -> None:
        while self.free:
            take = self.batcher.take(max(self.clock(), self._due))
            for item in take.expired:
                item.future.set_exception(TensorgateError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{self.model.label}: deadline passed while queued; it was not run"))
            if not take.batch:
                if take.wake_at is not None and take.wake_at != self._timer_at:
                    self._arm_timer(take.wake_at)
                return
            self._launch(take.batch)

    def _arm_timer(self, wake_at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = wake_at
        delay = max(0.0, wake_at - self.clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer, wake_at)

    def _on_timer(self, wake_at: float) -> None:
        self._timer = self._timer_at = None
        self._due = wake_at
        self._look()

    def _launch(self, batch: list[Pending]) -> None:
        instance = self.free.pop()
        backend, pool, staging = instance
        now = self.clock()
        queue_ns = self.model.stats.queue.add
        waits = [now - item.arrival for item in batch]
        for item, waited in zip(batch, waits):
            queue_ns(int(waited * 1e9))
            if item.timing is not None:
                item.timing.launched = now
            if item.hold is not None:
                item.hold.running = True
        self.metrics.queue.many(waits)
        if self.inline:
            try:
                result = execute(backend, self.model.batched, batch, staging)
            except Exception as exc:
                self._complete(batch, instance, None, exc)
            else:
                self._complete(batch, instance, result, None)
            return
        work = asyncio.get_running_loop().run_in_executor(
            pool, execute, backend, self.model.batched, batch, staging)
        work.add_done_callback(partial(self._finish, batch, instance))

    def _finish(self, batch: list[Pending], instance: tuple, work: asyncio.Future) -> None:
        # NOTE: a batch the pool dropped unrun (its version stopping) fails as a broken one
        # does: its callers are answered, and its regions let go.
        error = (RuntimeError("the model version stopped before the batch ran")
                 if work.cancelled() else work.exception())
        self._complete(batch, instance, None if error else work.result(), error)

    def _complete(self, batch: list[Pending], instance: tuple, result: BatchResult | None,
                  error: BaseException | None) -> None:
        self.free.append(instance)
        self._look()
        if result is None:
            log.error("%s failed on a batch of %d requests: %s", self.model.label, len(batch),
                      error)
            failure = TensorgateError(grpc.StatusCode.INTERNAL,
                                      f"{self.model.label} failed to run: {error}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(failure)
                if item.hold is not None:
                    item.hold.finished()
            return
        rows = sum(item.batch_size for item in batch)
        # NOTE: the statistics extension and /metrics count here, together, so they agree.
        self.model.stats.record_batch(rows, len(batch), result.input_ns, result.infer_ns,
                                      result.output_ns)
        self.metrics.executed(rows, (result.input_ns + result.infer_ns + result.output_ns) / 1e9)
        now = self.clock()
        answered = []
        for item, outputs in zip(batch, result.outputs):
            if item.timing is not None:
                _note(item.timing, now, rows, result)
            if not item.future.done():
                item.future.set_result(outputs)
                answered.append(now - item.arrival)
            if item.hold is not None:
                item.hold.finished()
        self.metrics.request.many(answered)


def _note(timing: Timing, done: float, rows: int, result: BatchResult) -> None:
    timing.done, timing.rows = done, rows
    timing.input_ns, timing.infer_ns = result.input_ns, result.infer_ns
