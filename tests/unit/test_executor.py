"""The executor stage: a large batch is gathered into its instance's kept buffer, in order,
and no answer shares memory with that buffer."""

from __future__ import annotations

import numpy as np

from common.model_config import TensorSpec
from runtime.batcher import Pending
from runtime.executor import JOIN_BELOW_BYTES, Staging, execute

WIDTH = 65_536  # FP32 values per row: 256 KiB, so batches of 2-row requests pass JOIN_BELOW_BYTES


class Echo:
    """A batching backend whose output is its input array itself (as an identity graph may be)."""

    platform = "test"
    backend_name = "test"
    device = "cpu"

    def __init__(self, width: int = WIDTH) -> None:
        self.inputs = (TensorSpec("x", "FP32", (width,)),)
        self.outputs = (TensorSpec("y", "FP32", (width,)),)
        self.fed: list[np.ndarray] = []

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        self.fed.append(feeds[0])
        return [feeds[0]]


def pending(rows: np.ndarray) -> Pending:
    return Pending(inputs=[memoryview(rows.tobytes())], shapes=[rows.shape],
                   batch_size=rows.shape[0], shape_key=(rows.shape[1:],), arrival=0.0,
                   deadline=None, future=None)  # type: ignore[arg-type]


def batch_of(seed: int, sizes: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((n, WIDTH), dtype=np.float32) for n in sizes]


def answers(result_outputs: list, index: int) -> np.ndarray:
    out = result_outputs[index][0]
    return np.frombuffer(out.raw, np.float32).reshape(out.shape)


def test_a_large_batch_is_gathered_in_order_into_the_kept_buffer() -> None:
    backend, staging = Echo(), Staging(max_rows=8)
    rows = batch_of(1, [2, 1, 1])
    assert sum(r.nbytes for r in rows) >= JOIN_BELOW_BYTES
    result = execute(backend, True, [pending(r) for r in rows], staging)
    fed = backend.fed[0]
    assert fed.shape == (4, WIDTH) and np.array_equal(fed, np.concatenate(rows))
    assert np.shares_memory(fed, staging.buffers[0])
    assert staging.buffers[0].nbytes == 8 * WIDTH * 4  # sized for a full batch
    for i, r in enumerate(rows):
        assert np.array_equal(answers(result.outputs, i), r)


def test_the_next_batch_reuses_the_buffer_and_earlier_answers_keep_their_values() -> None:
    backend, staging = Echo(), Staging(max_rows=8)
    first_rows, second_rows = batch_of(2, [2, 2]), batch_of(3, [3, 1])
    first = execute(backend, True, [pending(r) for r in first_rows], staging)
    buffer = staging.buffers[0]
    second = execute(backend, True, [pending(r) for r in second_rows], staging)
    assert staging.buffers[0] is buffer and np.shares_memory(backend.fed[1], buffer)
    assert np.array_equal(answers(first.outputs, 0), first_rows[0])
    assert np.array_equal(answers(first.outputs, 1), first_rows[1])
    assert np.array_equal(answers(second.outputs, 0), second_rows[0])


def test_a_batch_larger_than_the_buffer_gets_a_larger_one() -> None:
    backend, staging = Echo(), Staging(max_rows=4)
    execute(backend, True, [pending(r) for r in batch_of(4, [2, 2])], staging)
    rows = batch_of(5, [3, 3])  # more rows than max_rows said: the buffer grows, not overflows
    execute(backend, True, [pending(r) for r in rows], staging)
    assert np.array_equal(backend.fed[1], np.concatenate(rows))
    assert staging.buffers[0].nbytes == 6 * WIDTH * 4


def test_a_small_batch_is_joined_without_the_buffer() -> None:
    backend, staging = Echo(width=16), Staging(max_rows=8)
    rows = [np.ascontiguousarray(r[:, :16]) for r in batch_of(6, [1, 1])]
    result = execute(backend, True, [pending(r) for r in rows], staging)
    assert staging.buffers == {}
    assert np.array_equal(np.frombuffer(result.outputs[1][0].raw, np.float32), rows[1][0])


def test_small_outputs_are_each_requests_own_rows_and_shape() -> None:
    backend, staging = Echo(width=4), Staging(max_rows=8)
    rng = np.random.default_rng(7)
    rows = [rng.random((n, 4), dtype=np.float32) for n in (1, 3, 2)]
    result = execute(backend, True, [pending(r) for r in rows], staging)
    for i, r in enumerate(rows):
        out = result.outputs[i][0]
        assert type(out.raw) is bytes and out.shape == r.shape
        assert np.array_equal(answers(result.outputs, i), r)


def test_large_outputs_are_read_only_views_of_a_copy_not_of_the_inputs() -> None:
    backend, staging = Echo(), Staging(max_rows=8)
    rows = batch_of(8, [2, 1, 1])
    result = execute(backend, True, [pending(r) for r in rows], staging)
    for i, r in enumerate(rows):
        raw = result.outputs[i][0].raw
        assert isinstance(raw, memoryview) and raw.readonly and len(raw) == r.nbytes
        assert not np.shares_memory(np.frombuffer(raw, np.uint8), staging.buffers[0])
        assert np.array_equal(answers(result.outputs, i), r)
