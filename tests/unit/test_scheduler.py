"""The runtime scheduler with a fake backend: deadlines, queue bounds, failures, batch splitting.

No test sleeps a fixed time: each waits for a state (a batch running, requests queued) with a
generous ceiling, and time itself moves on a fake clock where a test needs it to.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from common.errors import TensorgateError
from common.model_config import DynamicBatching, ModelConfig, TensorSpec
from common.proto import grpc_service_pb2 as pb
from runtime.decode import InferCall, decode_infer
from runtime.model import ServedModel
from runtime.scheduler import Scheduler
from tests.waiting import until_async

CEILING_S = 30.0


# Wait for a state, looking every millisecond, up to CEILING_S; fail naming it past that.
until = functools.partial(until_async, ceiling_s=CEILING_S, every_s=0.001)


class FakeClock:
    """The scheduler's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeBackend:
    """Doubles its input; waits for `gate` before each run; can be told to fail."""

    platform = "fake"
    backend_name = "fake"
    device = "cpu"
    inputs = (TensorSpec("X", "FP32", (2,)),)
    outputs = (TensorSpec("Y", "FP32", (2,)),)

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []
        self.running = 0  # batches that entered run(), held at the gate or not
        self.fail = False

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        self.running += 1
        self.gate.wait(CEILING_S)
        self.batches.append(feeds[0].shape[0])
        if self.fail:
            raise RuntimeError("the model broke")
        return [feeds[0] * 2]


def served(backend: FakeBackend, queue: int = 16, delay_us: int = 0) -> ServedModel:
    config = ModelConfig(name="m", source=Path("config.yaml"), max_batch_size=8,
                         dynamic_batching=DynamicBatching(max_queue_delay_microseconds=delay_us,
                                                          max_queue_size=queue))
    return ServedModel(config, 1, [backend])  # type: ignore[list-item]


def request(rows: int, value: float) -> InferCall:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="X", datatype="FP32", shape=[rows, 2])
    message.raw_input_contents.append(np.full((rows, 2), value, "<f4").tobytes())
    return decode_infer(message.SerializeToString())


def values(response: pb.ModelInferResponse) -> list[float]:
    return np.frombuffer(response.raw_output_contents[0], "<f4").tolist()


async def started(backend: FakeBackend, clock: Callable[[], float] = time.monotonic,
                  **kwargs: int) -> Scheduler:
    scheduler = Scheduler(served(backend, **kwargs), clock)
    scheduler.start()
    return scheduler


async def test_concurrent_requests_share_a_batch_and_get_their_own_rows() -> None:
    backend = FakeBackend()
    backend.gate.clear()
    scheduler = await started(backend)
    first = asyncio.ensure_future(scheduler.infer(request(1, 1.0), None))
    await until(lambda: backend.running == 1, "the first batch running, held at the gate")
    rest = [asyncio.ensure_future(scheduler.infer(request(r, float(r)), None))
            for r in (1, 2, 3)]
    await until(lambda: len(scheduler.batcher) == 3, "three requests queued")
    backend.gate.set()
    answers = await asyncio.gather(first, *rest)
    assert backend.batches == [1, 6]
    assert values(answers[1]) == [2.0, 2.0]
    assert values(answers[2]) == [4.0] * 4
    assert values(answers[3]) == [6.0] * 6
    assert list(answers[3].outputs[0].shape) == [3, 2]
    await scheduler.stop()


async def test_a_backend_with_two_batches_in_flight_runs_two_at_once() -> None:
    backend = FakeBackend()
    backend.pipeline_depth = 2  # type: ignore[attr-defined]
    backend.gate.clear()
    scheduler = await started(backend)
    first = [asyncio.ensure_future(scheduler.infer(request(8, float(v)), None)) for v in (1, 2)]
    await until(lambda: backend.running == 2, "both batches running on the one instance")
    third = asyncio.ensure_future(scheduler.infer(request(8, 3.0), None))
    await until(lambda: len(scheduler.batcher) == 1, "a third batch queued: two is the depth")
    assert backend.running == 2
    backend.gate.set()
    answers = await asyncio.gather(*first, third)
    assert [values(a)[0] for a in answers] == [2.0, 4.0, 6.0]
    assert sorted(backend.batches) == [8, 8, 8]
    await scheduler.stop()


async def test_a_request_past_its_deadline_is_answered_and_never_runs() -> None:
    backend = FakeBackend()
    backend.gate.clear()
    clock = FakeClock()
    scheduler = await started(backend, clock)
    blocker = asyncio.ensure_future(scheduler.infer(request(1, 1.0), None))
    await until(lambda: backend.running == 1, "the blocker running, held at the gate")
    late = asyncio.ensure_future(scheduler.infer(request(1, 2.0), timeout=0.05))
    await until(lambda: len(scheduler.batcher) == 1, "the late request queued")
    clock.now += 0.15  # past its deadline while it waits behind the blocker
    backend.gate.set()
    await blocker
    with pytest.raises(TensorgateError) as caught:
        await late
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "model 'm' version 1" in caught.value.message
    assert backend.batches == [1]
    assert scheduler.model.stats.fail.count == 1
    await scheduler.stop()


async def test_a_full_queue_answers_resource_exhausted_at_once() -> None:
    backend = FakeBackend()
    backend.gate.clear()
    scheduler = await started(backend, queue=2)
    running = asyncio.ensure_future(scheduler.infer(request(8, 1.0), None))
    await until(lambda: backend.running == 1, "the first batch running, held at the gate")
    queued = [asyncio.ensure_future(scheduler.infer(request(8, 1.0), None)) for _ in range(2)]
    await until(lambda: len(scheduler.batcher) == 2, "the queue full")
    with pytest.raises(TensorgateError) as caught:
        await scheduler.infer(request(1, 1.0), None)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    backend.gate.set()
    await asyncio.gather(running, *queued)
    await scheduler.stop()


async def test_a_failing_batch_fails_its_requests_and_the_next_batch_still_runs() -> None:
    backend = FakeBackend()
    backend.fail = True
    scheduler = await started(backend)
    with pytest.raises(TensorgateError) as caught:
        await scheduler.infer(request(1, 1.0), None)
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert "the model broke" in caught.value.message
    backend.fail = False
    assert values(await scheduler.infer(request(1, 3.0), None)) == [6.0, 6.0]
    await scheduler.stop()


async def test_a_short_batch_waits_for_the_queue_delay() -> None:
    backend = FakeBackend()
    clock = FakeClock()
    scheduler = await started(backend, clock, delay_us=200_000)
    first = asyncio.ensure_future(scheduler.infer(request(1, 1.0), None))
    # Its look found a short batch and set a timer for the end of the queue delay.
    await until(lambda: scheduler._timer is not None, "the queue-delay timer armed")
    clock.now += 0.1  # half the delay: the second comes in a later look, not the same turn
    second = asyncio.ensure_future(scheduler.infer(request(1, 1.0), None))
    await until(lambda: len(scheduler.batcher) == 2, "the second request queued")
    assert backend.batches == []
    await asyncio.wait_for(asyncio.gather(first, second), CEILING_S)
    assert backend.batches == [2]
    await scheduler.stop()


class ThreadRecorder(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return super().run(feeds)


@pytest.mark.parametrize(("warmup_ns", "inline"), [(50_000, True), (5_000_000, False)])
async def test_fast_models_run_on_the_loop_and_slow_ones_in_their_thread(
        warmup_ns: int, inline: bool) -> None:
    backend = ThreadRecorder()
    model = served(backend)
    model.warmup_ns = warmup_ns
    scheduler = Scheduler(model, inline_ns=200_000)
    scheduler.start()
    assert values(await scheduler.infer(request(1, 2.0), None)) == [4.0, 4.0]
    on_loop = backend.threads == [threading.current_thread().name]
    assert on_loop is inline
    await scheduler.stop()


async def test_requests_put_in_one_turn_of_the_loop_run_as_one_inline_batch() -> None:
    backend = FakeBackend()
    model = served(backend)
    model.warmup_ns = 1_000
    scheduler = Scheduler(model, inline_ns=200_000)
    scheduler.start()
    answers = await asyncio.gather(*(scheduler.infer(request(1, float(v)), None)
                                     for v in (1, 2, 3)))
    assert backend.batches == [3]
    assert [values(a) for a in answers] == [[2.0, 2.0], [4.0, 4.0], [6.0, 6.0]]
    await scheduler.stop()


async def test_a_look_at_the_queue_that_fails_does_not_stop_the_scheduler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FakeBackend()
    scheduler = await started(backend)
    take = scheduler.batcher.take
    broken = [True]

    def take_once_broken(now: float):  # type: ignore[no-untyped-def]
        if broken.pop() if broken else False:
            raise RuntimeError("a bug in batch forming")
        return take(now)

    monkeypatch.setattr(scheduler.batcher, "take", take_once_broken)
    first = asyncio.ensure_future(scheduler.infer(request(1, 1.0), None))
    await until(lambda: not broken, "the broken look taken")
    assert not first.done()  # its look failed; it waits for the next one
    second = await asyncio.wait_for(scheduler.infer(request(1, 2.0), None), 60)
    assert values(second) == [4.0, 4.0]
    assert values(await asyncio.wait_for(first, 60)) == [2.0, 2.0]
    await scheduler.stop()
