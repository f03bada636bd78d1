"""A batch with rows in CUDA regions: the executor hands each such input to a backend on the GPU
as a Gather of its requests' parts in order, and to any other backend copied to the host; a
request's regions stay held until its batch has read them, even when its caller went first."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from common.errors import TensorgateError
from common.model_config import DynamicBatching, ModelConfig
from common.model_spec import TensorSpec
from loadtest.host_cuda import HostCuda, regions_with
from runtime.batcher import Pending
from runtime.core import RuntimeCore
from runtime.decode import InferCall, decode_infer
from runtime.device_rows import DeviceSpan, Gather, Hold
from runtime.executor import Staging, execute
from runtime.model import ModelStore, ServedModel
from runtime.promise import Promise
from runtime.scheduler import Scheduler
from tests.unit.gpu_helpers import host_copy
from tests.unit.test_cuda_shm import OWNER
from tests.unit.test_shm_regions import request
from tests.waiting import CEILING_S, until_async

PAIR = (TensorSpec("X", "FP32", (2,)), TensorSpec("Y", "FP32", (2,)))


class Recorder:
    """A backend that keeps its feeds and answers each row's X."""

    platform, backend_name, device = "test", "test", "cuda:0"
    inputs: tuple[TensorSpec, ...] = PAIR
    outputs: tuple[TensorSpec, ...] = (TensorSpec("Z", "FP32", (2,)),)

    def __init__(self, on_device: bool) -> None:
        self.gathers_on_device = on_device
        self.feeds: list = []

    def run(self, feeds: list) -> list[np.ndarray]:
        self.feeds = feeds
        x = feeds[0].host() if isinstance(feeds[0], Gather) else feeds[0]
        return [np.asarray(x, np.float32)]


def pending(x: bytes | DeviceSpan, y: bytes) -> Pending:
    return Pending([x, y], [(1, 2), (1, 2)], 1, ((2,), (2,)), 0.0, None, Promise(),
                   device=isinstance(x, DeviceSpan))


def row(*values: float) -> bytes:
    return np.array(values, np.float32).tobytes()


@pytest.mark.parametrize("on_device", [True, False])
def test_spans_and_host_rows_stay_in_request_order(on_device: bool) -> None:
    region = np.frombuffer(row(3, 4) + row(7, 8), np.uint8).copy()  # 'device memory'
    span = DeviceSpan(int(region.ctypes.data) + 8, 8, 0, host_copy)  # the second row: 7, 8
    batch = [pending(row(1, 2), row(0, 0)), pending(span, row(0, 1)),
             pending(row(5, 6), row(1, 1))]
    backend = Recorder(on_device)
    result = execute(backend, True, batch, Staging(64))
    x, y = backend.feeds
    if on_device:
        assert isinstance(x, Gather) and x.shape == (3, 2) and x.datatype == "FP32"
        assert x.parts[1] is span and x.nbytes == 24
        spans, hosts = x.runs()
        assert spans == [(8, span)] and [at for at, _ in hosts] == [0, 16]
    else:
        assert isinstance(x, np.ndarray)
        assert x.tolist() == [[1, 2], [7, 8], [5, 6]]
    # An input without spans is joined on the host as always.
    assert isinstance(y, np.ndarray) and y.tolist() == [[0, 0], [0, 1], [1, 1]]
    answers = [np.frombuffer(out[0].raw, np.float32).tolist() for out in result.outputs]
    assert answers == [[1, 2], [7, 8], [5, 6]]


def test_a_batch_without_spans_is_not_gathered() -> None:
    backend = Recorder(True)
    execute(backend, True, [pending(row(1, 2), row(3, 4))], Staging(64))
    assert all(isinstance(feed, np.ndarray) for feed in backend.feeds)


class Holding:
    """A backend on 'the GPU' (spans are host memory here): reads its Gather when it runs,
    once its gate opens, and answers X."""

    platform, backend_name, device = "test", "test", "cuda:0"
    gathers_on_device = True

    def __init__(self) -> None:
        self.inputs: tuple[TensorSpec, ...] = (TensorSpec("X0", "FP32", (4,)),)
        self.outputs: tuple[TensorSpec, ...] = (TensorSpec("Y0", "FP32", (4,)),)
        self.gate = threading.Event()
        self.running = 0
        self.fed: list[object] = []
        self.fails = False

    def run(self, feeds: list) -> list[np.ndarray]:
        self.running += 1
        self.gate.wait(CEILING_S)
        self.fed.append(feeds[0])
        if self.fails:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return [feeds[0].host() if isinstance(feeds[0], Gather) else feeds[0]]


async def serving_from(cuda: HostCuda) -> tuple[RuntimeCore, Scheduler, Holding]:
    backend = Holding()
    config = ModelConfig(name="m", source=Path("config.yaml"), max_batch_size=8,
                         dynamic_batching=DynamicBatching(max_queue_delay_microseconds=0))
    model = ServedModel(config, 1, [backend], warmup_ns=0.0)  # type: ignore[list-item]
    store = ModelStore()
    store.add(model)
    scheduler = Scheduler(model)
    scheduler.start()
    core = RuntimeCore(store, {id(model): scheduler}, regions=regions_with(cuda))
    core.ready = True
    return core, scheduler, backend


def in_region(offset: int) -> InferCall:
    message = request([(f"{OWNER}/g", offset, 16)], [])
    message.inputs[0].shape[:] = [1, 4]
    return decode_infer(message.SerializeToString())


async def test_a_request_in_a_cuda_region_is_gathered_where_it_lies() -> None:
    cuda = HostCuda()
    handle, device = cuda.export(64)
    device[16:32] = np.frombuffer(row(1, 2, 3, 4), np.uint8)
    core, scheduler, backend = await serving_from(cuda)
    await core.regions.cuda.register(f"{OWNER}/g", handle, 0, 64)
    backend.gate.set()
    answer = await core.infer(in_region(16), None)
    assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == [1, 2, 3, 4]
    (fed,) = backend.fed
    assert isinstance(fed, Gather) and isinstance(fed.parts[0], DeviceSpan)
    assert fed.parts[0].pointer == device.ctypes.data + 16
    assert core.regions.cuda.table[f"{OWNER}/g"].users == 0
    await scheduler.stop()


async def test_a_cancelled_callers_region_stays_open_until_its_batch_has_read_it() -> None:
    cuda = HostCuda()
    handle, device = cuda.export(64)
    device[:16] = np.frombuffer(row(5, 6, 7, 8), np.uint8)
    core, scheduler, backend = await serving_from(cuda)
    await core.regions.cuda.register(f"{OWNER}/g", handle, 0, 64)
    region = core.regions.cuda.table[f"{OWNER}/g"]
    caller = asyncio.ensure_future(core.infer(in_region(0), None))
    await until_async(lambda: backend.running == 1, "running the batch", every_s=0.001)
    unregistering = asyncio.ensure_future(core.regions.cuda.unregister(f"{OWNER}/", wait_s=60))
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    # The batch still reads the region: it is neither released nor closed yet.
    assert region.users == 1 and not unregistering.done() and not cuda.closed
    backend.gate.set()
    await until_async(lambda: unregistering.done(), "unregistered", every_s=0.001)
    assert cuda.closed == [device.ctypes.data]
    (fed,) = backend.fed
    assert isinstance(fed, Gather) and fed.host().tolist() == [[5, 6, 7, 8]]
    await scheduler.stop()


async def test_a_cancelled_caller_still_queued_lets_its_region_go_at_once() -> None:
    cuda = HostCuda()
    handle, _ = cuda.export(64)
    core, scheduler, backend = await serving_from(cuda)
    await core.regions.cuda.register(f"{OWNER}/g", handle, 0, 64)
    region = core.regions.cuda.table[f"{OWNER}/g"]
    lanes = len(scheduler.free)
    running = [asyncio.ensure_future(core.infer(in_region(0), None)) for _ in range(lanes)]
    await until_async(lambda: backend.running == lanes, "every lane running", every_s=0.001)
    queued = asyncio.ensure_future(core.infer(in_region(16), None))
    await until_async(lambda: region.users == lanes + 1, "the last one queued", every_s=0.001)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    # Nothing will read its rows: dropped from the queue, its hold on the region goes now.
    assert region.users == lanes
    backend.gate.set()
    await asyncio.gather(*running)
    assert region.users == 0 and backend.running == lanes
    await scheduler.stop()


async def test_a_failed_batch_lets_a_cancelled_callers_region_go() -> None:
    cuda = HostCuda()
    handle, _ = cuda.export(64)
    core, scheduler, backend = await serving_from(cuda)
    backend.fails = True
    await core.regions.cuda.register(f"{OWNER}/g", handle, 0, 64)
    region = core.regions.cuda.table[f"{OWNER}/g"]
    caller = asyncio.ensure_future(core.infer(in_region(0), None))
    await until_async(lambda: backend.running == 1, "running the batch", every_s=0.001)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert region.users == 1
    backend.gate.set()
    await until_async(lambda: region.users == 0, "released after the failed batch",
                      every_s=0.001)
    await scheduler.stop()


async def test_a_batch_its_pool_dropped_unrun_fails_its_callers_and_lets_go() -> None:
    _, scheduler, _ = await serving_from(HostCuda())
    hold = Hold()
    hold.running = True
    released: list[bool] = []
    hold.after = lambda: released.append(True)
    item = pending(row(1, 2), row(3, 4))
    item.hold = hold
    dropped: asyncio.Future = asyncio.get_running_loop().create_future()
    dropped.cancel()
    scheduler._finish([item], scheduler.free.pop(), dropped)
    with pytest.raises(TensorgateError, match="stopped before the batch ran"):
        item.future.result()
    assert released == [True] and not hold.running
    await scheduler.stop()


async def test_an_output_wanted_in_a_cuda_region_is_written_there_by_the_batch() -> None:
    cuda = HostCuda()
    handle, memory = cuda.export(64)
    memory[:16] = np.frombuffer(row(1, 2, 3, 4), np.uint8)
    base = int(memory.ctypes.data)
    writers: list[tuple[int, str]] = []
    plain = cuda.copy

    def copy(target: int, source: int, size: int, device: int) -> None:
        writers.append((target - base, threading.current_thread().name))
        plain(target, source, size, device)

    cuda.copy = copy  # type: ignore[method-assign]
    core, scheduler, backend = await serving_from(cuda)
    await core.regions.cuda.register(f"{OWNER}/g", handle, 0, 64)
    backend.gate.set()
    message = request([(f"{OWNER}/g", 0, 16)], [(f"{OWNER}/g", 32, 16)])
    message.inputs[0].shape[:] = [1, 4]
    answer = await core.infer(decode_infer(message.SerializeToString()), None)
    # Written by the model instance's own thread, right after its batch: no hop per request.
    assert np.frombuffer(memory[32:48].tobytes(), np.float32).tolist() == [1, 2, 3, 4]
    assert (32, "m-1_0") in writers and len(writers) == 2  # NOTE: the other: the input's read
    assert list(answer.raw_output_contents) == [b""]
    # Too small a region: the answer says so, for this request alone.
    small = request([(f"{OWNER}/g", 0, 16)], [(f"{OWNER}/g", 48, 8)])
    small.inputs[0].shape[:] = [1, 4]
    with pytest.raises(TensorgateError, match=r"output 'Y0' takes 16 bytes; CUDA shared memory "
                                              r"region 'g' gives it 8"):
        await core.infer(decode_infer(small.SerializeToString()), None)
    assert core.regions.cuda.table[f"{OWNER}/g"].users == 0
    await scheduler.stop()
