"""The lane's infer fast path (no task per frame): a batch's answers leave in one write, none is
lost when another connection's calls in the same batch are cancelled, and outputs that go
through the arena are byte-identical to what the model returned, straight from its output."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import numpy as np

from common import lane
from common.arena import Arena
from common.model_config import DynamicBatching, ModelConfig, TensorSpec
from common.proto import grpc_service_pb2 as pb
from runtime.core import RuntimeCore
from runtime.lane_server import Greeting, LaneServer
from runtime.model import ModelStore, ServedModel
from runtime.scheduler import Scheduler
from tests.waiting import until_async

CEILING_S = 30.0
BIG = 32 * 1024  # FP32 elements per row: 128 KiB, so a batch of 8 uses the staging buffer


# Wait for a state, looking every millisecond, up to CEILING_S; fail naming it past that.
until = functools.partial(until_async, ceiling_s=CEILING_S, every_s=0.001)


class Identity:
    """Returns its input array itself (the staging buffer, for a large batch); can be held."""

    platform = backend_name = "fake"
    device = "cpu"

    def __init__(self, row: int) -> None:
        self.inputs = (TensorSpec("X", "FP32", (row,)),)
        self.outputs = (TensorSpec("Y", "FP32", (row,)),)
        self.gate = threading.Event()
        self.gate.set()
        self.running = 0
        self.batches: list[int] = []

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        self.running += 1
        self.gate.wait(CEILING_S)
        self.batches.append(feeds[0].shape[0])
        return [feeds[0]]


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writelines(self, parts: list[Any]) -> None:
        self.writes.append(b"".join(bytes(part) for part in parts))

    def close(self) -> None:
        pass


def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(call id, kind, payload) of every frame in ``data``."""
    found, at = [], 0
    while at < len(data):
        size, call_id, kind, _ = lane.HEADER.unpack_from(data, at)
        at += lane.HEADER.size
        found.append((call_id, kind, data[at : at + size]))
        at += size
    return found


def infer_frame(call_id: int, row: np.ndarray) -> bytes:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="X", datatype="FP32", shape=[1, row.size])
    message.raw_input_contents.append(row.astype("<f4").tobytes())
    payload = message.SerializeToString()
    return lane.header(call_id, lane.METHOD_KIND["ModelInfer"], len(payload)) + payload


def feed(server: LaneServer, data: bytes) -> None:
    """Deliver ``data`` as the kernel would: into the protocol's buffers, in pieces."""
    at = 0
    while at < len(data):
        buffer = server.get_buffer(-1)
        count = min(len(buffer), len(data) - at)
        buffer[:count] = data[at : at + count]
        server.buffer_updated(count)
        at += count


async def serving(backend: Identity, inline: bool = False) -> tuple[RuntimeCore, Scheduler]:
    config = ModelConfig(name="m", source=Path("config.yaml"), max_batch_size=8,
                         dynamic_batching=DynamicBatching(max_queue_delay_microseconds=0))
    model = ServedModel(config, 1, [backend], warmup_ns=0.0)  # type: ignore[list-item]
    store = ModelStore()
    store.add(model)
    scheduler = Scheduler(model, inline_ns=1 if inline else 0)
    scheduler.start()
    core = RuntimeCore(store, {id(model): scheduler})
    core.ready = True
    return core, scheduler


def connect(core: RuntimeCore, out: Arena | None = None) -> tuple[LaneServer, Transport]:
    server = LaneServer(core, 1 << 24, Greeting(out=out))
    transport = Transport()
    server.connection_made(transport)
    return server, transport


async def test_a_batch_answers_every_call_in_one_write() -> None:
    backend = Identity(4)
    core, scheduler = await serving(backend)
    server, transport = connect(core)
    rows = [np.full(4, i, "<f4") for i in range(8)]
    feed(server, b"".join(infer_frame(100 + i, row) for i, row in enumerate(rows)))
    await until(lambda: len(transport.writes) >= 1, "the batch answered")
    assert backend.batches == [8]
    assert len(transport.writes) == 1, "one batch's answers in more than one write"
    answers = frames(transport.writes[0])
    assert sorted(call_id for call_id, _, _ in answers) == list(range(100, 108))
    for call_id, kind, payload in answers:
        assert kind == lane.OK
        response = pb.ModelInferResponse.FromString(payload)
        assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == \
            rows[call_id - 100].tolist()
    assert scheduler.model.in_flight == 0 and not server.waiting
    await scheduler.stop()


async def test_an_inline_batchs_answers_are_built_as_it_completes() -> None:
    """No loop turn, task or handle per answer: the batch's completion calls the lane back."""
    backend = Identity(4)
    core, scheduler = await serving(backend, inline=True)
    server, transport = connect(core)
    feed(server, b"".join(infer_frame(i, np.full(4, i, "<f4")) for i in (1, 2, 3)))
    assert len(server.waiting) == 3 and not server.out
    scheduler._dispatch_ready()  # the look that call_soon would run: the batch runs inline
    assert backend.batches == [3] and not server.waiting
    assert [call_id for call_id, _, _ in frames(b"".join(bytes(p) for p in server.out))] == \
        [1, 2, 3]
    assert scheduler.model.in_flight == 0
    await until(lambda: len(transport.writes) == 1, "the answers written")
    await scheduler.stop()


async def test_calls_cancelled_while_queued_are_settled_at_once() -> None:
    backend = Identity(4)
    core, scheduler = await serving(backend)
    server, transport = connect(core)
    feed(server, b"".join(infer_frame(i, np.zeros(4)) for i in (1, 2)))
    assert scheduler.model.in_flight == 2
    server.connection_lost(None)
    assert scheduler.model.in_flight == 0 and not server.waiting and not server.out
    await until(lambda: not scheduler._look_due, "the queue looked at")
    assert backend.batches == [] and len(scheduler.batcher) == 0 and not transport.writes
    await scheduler.stop()


async def test_a_dropped_connection_loses_no_answer_of_another_in_the_same_batch() -> None:
    backend = Identity(4)
    backend.gate.clear()
    core, scheduler = await serving(backend)
    running, dropped = connect(core)
    feed(running, infer_frame(1, np.zeros(4)))
    await until(lambda: backend.running == 1, "a batch held at the gate")
    second, kept = connect(core)
    leaving, gone = connect(core)
    feed(second, b"".join(infer_frame(i, np.full(4, i)) for i in (2, 3)))
    feed(leaving, b"".join(infer_frame(i, np.full(4, i)) for i in (4, 5)))
    await until(lambda: len(scheduler.batcher) == 4, "four calls queued behind it")
    leaving.connection_lost(None)  # its two calls are cancelled while queued
    running.connection_lost(None)  # its call is cancelled while its batch runs
    backend.gate.set()
    await until(lambda: len(kept.writes) >= 1, "the kept connection answered")
    assert [call_id for call_id, _, _ in frames(kept.writes[0])] == [2, 3]
    assert not gone.writes and not dropped.writes
    assert backend.batches == [1, 2], "the cancelled calls ran"
    await until(lambda: scheduler.model.in_flight == 0, "every call settled")
    await scheduler.stop()


async def test_outputs_through_the_arena_are_the_models_bytes_batch_after_batch() -> None:
    backend = Identity(BIG)
    core, scheduler = await serving(backend, inline=True)
    out = Arena(64 << 20, "tensorgate-test")
    server, transport = connect(core, out)
    rng = np.random.default_rng(7)
    rows = [rng.random(BIG, np.float32) for _ in range(17)]
    # NOTE: two batches of 8 run back to back on the loop, reusing one staging buffer, before
    # the first batch's answers are written: each answer must still be its own request's rows.
    feed(server, b"".join(infer_frame(i, rows[i]) for i in range(17)))
    await until(lambda: sum(len(frames(w)) for w in transport.writes) == 17, "17 answers")
    assert backend.batches == [8, 8, 1]
    for call_id, kind, payload in (f for w in transport.writes for f in frames(w)):
        assert kind == lane.OK_REF
        refs, rest = lane.parse_refs(payload)
        response = pb.ModelInferResponse.FromString(rest)
        assert not response.raw_output_contents and list(response.outputs[0].shape) == [1, BIG]
        (start, length), = refs
        assert bytes(out.view[start : start + length]) == rows[call_id].tobytes()
    server.connection_lost(None)
    await scheduler.stop()
