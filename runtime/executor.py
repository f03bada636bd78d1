"""The executor stage: join a batch's bytes, run the backend, split outputs by byte offset.

Runs in the model instance's own thread; touches no event-loop state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from common.datatypes import NUMPY_DTYPES, from_numpy
from common.tensors import encode_text, serialize_bytes, text_elements
from common.wire import Buffer
from runtime.backends.base import Backend
from runtime.batcher import Pending
from runtime.cuda_api import CudaError
from runtime.device_rows import DeviceSpan, Gather

#: Batches of fewer input bytes are joined into a new bytes object: cheaper than keeping a
#: buffer for them.
JOIN_BELOW_BYTES = 1 << 20
#: A request's output of this size on is a view of its batch's output, not a copy of its own:
#: the lane writes it straight into its arena from there.
VIEW_FROM_BYTES = 16 * 1024


class Staging:
    """One model instance's input buffers, kept from batch to batch: a large batch's rows are
    copied into a buffer of the instance's own, not into a fresh allocation on every batch, so
    a batch of large inputs (images) does not pay for allocating and faulting in new pages."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max(1, max_rows)
        self.buffers: dict[int, np.ndarray] = {}

    def buffer(self, j: int, nbytes: int, row_bytes: int) -> np.ndarray:
        """Input ``j``'s first ``nbytes`` bytes; the buffer is sized for a full batch of rows."""
        found = self.buffers.get(j)
        if found is None or found.nbytes < nbytes:
            found = np.empty(max(nbytes, row_bytes * self.max_rows), np.uint8)
            self.buffers[j] = found
        return found[:nbytes]


@dataclass
class Output:
    """One output tensor of one request."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    #: bytes, or (large) a read-only byte view of the batch's output array.
    raw: bytes | memoryview


@dataclass
class BatchResult:
    outputs: list[list[Output]]
    input_ns: int
    infer_ns: int
    output_ns: int


def execute(backend: Backend, batched: bool, batch: list[Pending], staging: Staging
            ) -> BatchResult:
    t0 = time.perf_counter_ns()
    device = any(p.device for p in batch)
    if device:
        feeds = _gathers(backend, batched, batch, staging)
    else:
        feeds = [_assemble(batch, j, spec.datatype, batched, staging)
                 for j, spec in enumerate(backend.inputs)]
    t1 = time.perf_counter_ns()
    results = backend.run(feeds)
    t2 = time.perf_counter_ns()
    outputs = _split(backend, batched, batch, results, feeds)
    if device:
        _place(batch, outputs)
    t3 = time.perf_counter_ns()
    return BatchResult(outputs, t1 - t0, t2 - t1, t3 - t2)


def _gathers(backend: Backend, batched: bool, batch: list[Pending], staging: Staging
             ) -> list[np.ndarray]:
    """A batch with rows in CUDA regions: each input with such rows as a Gather for a backend
    that copies them on the device, else copied to the host here, span by span."""
    on_device = getattr(backend, "gathers_on_device", False)
    feeds: list[np.ndarray] = []
    for j, spec in enumerate(backend.inputs):
        parts = [p.inputs[j] for p in batch]
        if not any(isinstance(part, DeviceSpan) for part in parts):
            feeds.append(_assemble(batch, j, spec.datatype, batched, staging))
            continue
        found = Gather(tuple(parts), _shape(batch, j, batched), spec.datatype)
        # NOTE: the Backend protocol's feeds are arrays; a Gather goes only to a backend that
        # says it takes one.
        feeds.append(found if on_device else found.host())  # type: ignore[arg-type]
    return feeds


def _place(batch: list[Pending], outputs: list[list[Output]]) -> None:
    """Outputs wanted in CUDA regions, written there from here (a copy waits for the GPU, and
    this is the instance's thread) and left out of the answer. One that does not fit, or whose
    copy fails, stays in the answer: the lease then names what went wrong, for it alone."""
    for pending, outs in zip(batch, outputs):
        if not pending.places:
            continue
        for out in outs:
            target = pending.places.get(out.name)
            if target is None or not len(out.raw) or len(out.raw) > target.size:
                continue
            try:
                target.fill(out.raw)
            except CudaError:
                continue
            out.raw = b""


def _shape(batch: list[Pending], j: int, batched: bool) -> tuple[int, ...]:
    shape = batch[0].shapes[j]
    if batched:
        return (sum(p.batch_size for p in batch), *shape[1:])
    return shape


def _assemble(batch: list[Pending], j: int, datatype: str, batched: bool,
              staging: Staging) -> np.ndarray:
    # NOTE: host bytes only: an input with rows in CUDA regions goes through `_gathers`.
    rows: list[Buffer] = [p.inputs[j] for p in batch]  # type: ignore[misc]
    shape = _shape(batch, j, batched)
    if datatype == "BYTES":
        raw = rows[0] if len(rows) == 1 else b"".join(rows)
        # NOTE: backends take strings as str (ONNX Runtime would str() a bytes object into
        # "b'...'"); validation let only UTF-8 text through.
        return np.array(text_elements(raw, "input"), dtype=object).reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if len(rows) == 1 or len(rows[0]) * len(rows) < JOIN_BELOW_BYTES:
        raw = rows[0] if len(rows) == 1 else b"".join(rows)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    nbytes = sum(len(row) for row in rows)
    out = staging.buffer(j, nbytes, len(rows[0]) // max(1, batch[0].batch_size))
    # NOTE: numpy copies without the GIL, so the event loop keeps decoding and answering while
    # a large batch is gathered; a copy in Python (memoryview assignments) would hold the GIL.
    np.concatenate([np.frombuffer(row, dtype=np.uint8) for row in rows], out=out)
    return out.view(dtype).reshape(shape)


def _split(
    backend: Backend, batched: bool, batch: list[Pending], results: list[np.ndarray],
    feeds: list[np.ndarray],
) -> list[list[Output]]:
    per_request: list[list[Output]] = [[] for _ in batch]
    for spec, array in zip(backend.outputs, results):
        datatype = spec.datatype if spec.datatype != "BF16" else from_numpy(array.dtype)
        if datatype != "BYTES":
            array = _owned(np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]), feeds)
        if not batched:
            per_request[0].append(Output(spec.name, datatype, array.shape, _raw(array, datatype)))
            continue
        if datatype != "BYTES" and array.nbytes < VIEW_FROM_BYTES and array.ndim \
                and array.shape[0] == sum(pending.batch_size for pending in batch):
            _split_small(spec.name, datatype, array, batch, per_request)
            continue
        offset = 0
        for out, pending in zip(per_request, batch):
            part = array[offset : offset + pending.batch_size]
            offset += pending.batch_size
            out.append(Output(spec.name, datatype, part.shape, _raw(part, datatype)))
    return per_request


def _split_small(name: str, datatype: str, array: np.ndarray, batch: list[Pending],
                 per_request: list[list[Output]]) -> None:
    """A small output's rows as slices of one bytes object: a numpy view and a copy of its own
    for each request cost more than the bytes they hold."""
    whole, rest = array.tobytes(), array.shape[1:]
    row_bytes = array.nbytes // array.shape[0] if array.shape[0] else 0
    at = 0
    for out, pending in zip(per_request, batch):
        rows = pending.batch_size
        end = at + rows * row_bytes
        out.append(Output(name, datatype, (rows, *rest), whole[at:end]))
        at = end


def _owned(array: np.ndarray, feeds: list[np.ndarray]) -> np.ndarray:
    """``array``, copied once for the whole batch when its requests' outputs will be views of it
    and it shares memory with an input (an identity model): the next batch reuses the staging
    buffer, and the gateway its arena slot, before every answer has been sent."""
    if array.nbytes < VIEW_FROM_BYTES or not any(
            isinstance(f, np.ndarray) and np.may_share_memory(array, f) for f in feeds):
        return array
    return array.copy()


def _raw(array: np.ndarray, datatype: str) -> bytes | memoryview:
    if datatype == "BYTES":
        return serialize_bytes(encode_text(v) for v in array.reshape(-1))
    if array.nbytes >= VIEW_FROM_BYTES:
        return array.reshape(-1).view(np.uint8).data.toreadonly()
    return array.tobytes()
