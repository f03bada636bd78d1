"""The dynamic batcher's rules, driven by an injected clock (no event loop timing involved)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from common.errors import TensorgateError
from runtime.batcher import Batcher, Pending


class _Future:
    """Stands in for an asyncio future: only `done` matters to the batcher."""

    def __init__(self) -> None:
        self.cancelled = False

    def done(self) -> bool:
        return self.cancelled


def item(rows: int = 1, at: float = 0.0, key: tuple = ((64,),), deadline: float | None = None,
         ) -> Pending:
    return Pending([b""], [(rows, *key[0])], rows, key, at, deadline, _Future())  # type: ignore[arg-type]


def batcher(max_batch: int = 8, delay: float = 0.001, preferred: tuple[int, ...] = (),
            queue: int = 100, batching: bool = True) -> Batcher:
    return Batcher(max_batch, delay, preferred, queue, batching)


def test_full_batch_goes_at_once() -> None:
    b = batcher(max_batch=4)
    items = [item() for _ in range(5)]
    for i in items:
        b.put(i, "m")
    take = b.take(now=0.0)
    assert take.batch == items[:4]
    assert len(b) == 1


def test_short_batch_waits_for_the_delay_after_the_oldest() -> None:
    b = batcher(max_batch=8, delay=0.002)
    b.put(item(at=1.000), "m")
    b.put(item(at=1.001), "m")
    early = b.take(now=1.0015)
    assert early.batch == [] and early.wake_at == pytest.approx(1.002)
    late = b.take(now=1.002)
    assert len(late.batch) == 2 and len(b) == 0


def test_preferred_size_reached_goes_without_waiting() -> None:
    b = batcher(max_batch=8, delay=10.0, preferred=(2, 4))
    for _ in range(4):
        b.put(item(), "m")
    assert len(b.take(now=0.0).batch) == 4


def test_a_smaller_preferred_size_goes_at_once_and_the_rest_waits() -> None:
    b = batcher(max_batch=8, delay=10.0, preferred=(2, 4))
    items = [item(at=0.0) for _ in range(3)]
    for i in items:
        b.put(i, "m")
    assert b.take(now=0.0).batch == items[:2]
    rest = b.take(now=0.0)
    assert rest.batch == [] and rest.wake_at == pytest.approx(10.0)


def test_a_deep_queue_goes_in_preferred_batches_until_the_delay_is_up() -> None:
    b = batcher(max_batch=8, delay=1.0, preferred=(4,))
    for _ in range(7):
        b.put(item(at=0.0), "m")
    assert len(b.take(now=0.5).batch) == 4
    b.put(item(at=0.5), "m")
    b.put(item(at=0.5), "m")
    # Past the oldest request's delay, a batch takes all it can, up to max_batch_size.
    assert len(b.take(now=1.0).batch) == 5


def test_requests_that_step_over_every_preferred_size_go_as_far_as_they_reach() -> None:
    b = batcher(max_batch=8, delay=10.0, preferred=(4,))
    first, second = item(rows=3), item(rows=3)
    b.put(first, "m")
    b.put(second, "m")
    assert b.take(now=0.0).batch == [first]


def test_rows_count_each_requests_own_batch_dimension() -> None:
    b = batcher(max_batch=8)
    first, second, third = item(rows=3), item(rows=4), item(rows=2)
    for i in (first, second, third):
        b.put(i, "m")
    take = b.take(now=0.0)
    # 3 + 4 = 7 rows; the third (2 rows) would overflow 8, so it waits for the next batch.
    assert take.batch == [first, second]
    assert list(b.queue) == [third]


def test_only_equal_non_batch_shapes_share_a_batch() -> None:
    b = batcher(max_batch=8, delay=0.0)
    a1, other, a2 = item(key=((64,),)), item(key=((32,),)), item(key=((64,),))
    for i in (a1, other, a2):
        b.put(i, "m")
    assert b.take(now=0.0).batch == [a1, a2]
    assert b.take(now=0.0).batch == [other]


def test_expired_requests_are_returned_and_never_batched() -> None:
    b = batcher(max_batch=8, delay=0.0)
    dead, alive = item(deadline=0.5), item(deadline=2.0)
    b.put(dead, "m")
    b.put(alive, "m")
    take = b.take(now=1.0)
    assert take.expired == [dead]
    assert take.batch == [alive]


def test_cancelled_requests_are_dropped() -> None:
    b = batcher(max_batch=8, delay=0.0)
    gone, kept = item(), item()
    gone.future.cancelled = True  # type: ignore[attr-defined]
    b.put(gone, "m")
    b.put(kept, "m")
    take = b.take(now=0.0)
    assert take.batch == [kept] and take.expired == []


def test_full_queue_answers_resource_exhausted() -> None:
    b = batcher(queue=2)
    b.put(item(), "model 'm'")
    b.put(item(), "model 'm'")
    with pytest.raises(TensorgateError) as caught:
        b.put(item(), "model 'm'")
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "model 'm'" in caught.value.message and "queue is full" in caught.value.message


def test_without_dynamic_batching_each_request_runs_alone() -> None:
    b = batcher(batching=False)
    first, second = item(), item()
    b.put(first, "m")
    b.put(second, "m")
    assert b.take(now=0.0).batch == [first]
    assert b.take(now=0.0).batch == [second]


def test_empty_queue_gives_nothing_and_no_wakeup() -> None:
    take = batcher().take(now=5.0)
    assert take.batch == [] and take.expired == [] and take.wake_at is None


def test_real_futures_work_as_pending_futures() -> None:
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        pending = Pending([b""], [(1, 64)], 1, ((64,),), 0.0, None, future)
        b = batcher(delay=0.0)
        b.put(pending, "m")
        future.cancel()
        assert b.take(now=0.0).batch == []
    finally:
        loop.close()
