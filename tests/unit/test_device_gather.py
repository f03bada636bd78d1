"""A batch with rows in CUDA regions: the executor hands each such input to a backend on the GPU
as a Gather of its requests' parts in order, and to any other backend copied to the host."""

from __future__ import annotations

import numpy as np
import pytest

from common.model_spec import TensorSpec
from runtime.batcher import Pending
from runtime.device_rows import DeviceSpan, Gather
from runtime.executor import Staging, execute
from runtime.promise import Promise
from tests.unit.gpu_helpers import host_copy

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
