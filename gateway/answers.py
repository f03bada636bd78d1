"""The answer log: every inference answer, kept in a bounded buffer by `record()` on the hot path,
parsed and written to `answers.db` in batches by a background flusher and its writer process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError

from common.datatypes import NUMPY_DTYPES
from common.proto import grpc_service_pb2 as pb
from common.tensors import CONTENTS_FIELD
from gateway.answer_store import (
    CLASS,
    FEEDBACK_PER_CALLER,
    KEEP_PER_MODEL,
    MAX_ANSWERS,
    MAX_FEEDBACK,
    VALUE,
    AnswerRow,
    AnswerStore,
)

log = logging.getLogger("tensorgate.answers")
#: at, request id, model, version, code, latency (s), the serialized ModelInferResponse or None.
Pending = tuple[float, str, str, str, str, float, bytes | None]
T = TypeVar("T")


def _first_row(output: Any, raw: bytes | None, width: int) -> np.ndarray | None:
    """The first `width` elements of an output tensor, from its raw bytes or typed contents."""
    if output.datatype == "BF16" and raw is not None:
        # NOTE: bfloat16 is the top half of a float32; numpy has no type of its own for it.
        halves = np.frombuffer(raw, "<u2", count=min(width, len(raw) // 2))
        return (halves.astype("<u4") << 16).view("<f4")
    dtype = NUMPY_DTYPES.get(output.datatype)
    if dtype is None or output.datatype == "BYTES":
        return None
    if raw is not None:
        return np.frombuffer(raw, dtype, count=min(width, len(raw) // dtype.itemsize))
    field = CONTENTS_FIELD.get(output.datatype)
    if field is None:
        return None
    return np.asarray(getattr(output.contents, field)[:width], dtype=dtype)


def parse_answer(answer: bytes) -> tuple[str, int | None, float | None]:
    """(served version, kind, predicted) of a serialized ModelInferResponse's first output.

    [N, C] with C > 1: a classifier; the argmax of row 0 is the predicted class. Otherwise the
    first element: a class label for integer and BOOL outputs, a value (regression) for floats.
    Anything unreadable (BYTES, no output, no elements, NaN): kind and predicted are None.
    """
    try:
        response = pb.ModelInferResponse.FromString(answer)
    except DecodeError:
        return "", None, None
    if not response.outputs:
        return response.model_version, None, None
    output = response.outputs[0]
    shape = list(output.shape)
    width = max(1, shape[-1]) if len(shape) >= 2 else 1
    raw = response.raw_output_contents[0] if response.raw_output_contents else None
    row = _first_row(output, raw, width)
    if row is None or row.size == 0:
        return response.model_version, None, None
    if row.size > 1:
        return response.model_version, CLASS, float(np.argmax(row))
    value = float(row[0])
    if not math.isfinite(value):
        return response.model_version, None, None
    kind = VALUE if row.dtype.kind == "f" else CLASS
    return response.model_version, kind, value


def to_rows(batch: Iterable[Pending]) -> list[AnswerRow]:
    """Parse pending answers into rows; the version comes from the answer when not given."""
    rows: list[AnswerRow] = []
    for at, request_id, model, version, code, latency_s, answer in batch:
        kind: int | None = None
        predicted: float | None = None
        if answer is not None:
            served, kind, predicted = parse_answer(answer)
            version = version or served
        rows.append((model, request_id, version, code, at, latency_s, kind, predicted))
    return rows


class AnswerLog:
    """Record answers on the event loop for a few µs each; a flusher task writes them in batches.

    record() appends a tuple to a buffer bounded in answers and in bytes (dropping and counting
    when full) and wakes the flusher past `threshold`; the flusher also wakes every `interval_s`.
    Parsing and SQLite run in one writer process, which owns the store's connection: in a
    thread, parsing took the GIL from the event loop in bursts, and the gateway lost a fifth of
    its requests/s under load. The process starts with the first batch.
    """

    def __init__(self, path: Path, capacity: int = 100_000, threshold: int = 2_000,
                 interval_s: float = 0.5, keep: int = KEEP_PER_MODEL,
                 clock: Callable[[], float] = time.time, max_bytes: int = 64 << 20,
                 max_answers: int = MAX_ANSWERS, feedback_per_caller: int = FEEDBACK_PER_CALLER,
                 max_feedback: int = MAX_FEEDBACK) -> None:
        self.path = Path(path)
        #: The store's bounds: answers in all, feedback rows per caller and model, and in all.
        self.limits = (keep, max_answers, feedback_per_caller, max_feedback)
        self.capacity = capacity
        # NOTE: answers are held whole until parsed: 100,000 answers of a 1000-class model
        # would be 400 MB without a bound in bytes too.
        self.max_bytes = max_bytes
        self.threshold = threshold
        self.interval_s = interval_s
        self.keep = keep
        self.clock = clock
        #: Answers not recorded because the buffer was full, written, and lost to a write error.
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self._buffer: deque[Pending] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._writer: ProcessPoolExecutor | None = None

    def record(self, request_id: str, model: str, version: str, code: str, latency_s: float,
               answer: bytes | None) -> None:
        """Keep one answer for the flusher (hot path: no parsing, no I/O). Call on the loop."""
        buffer = self._buffer
        size = 0 if answer is None else len(answer)
        # NOTE: NOT_FOUND answers are of no model served (made-up names): nothing to compare.
        if code == "NOT_FOUND":
            return
        if len(buffer) >= self.capacity or self._bytes + size > self.max_bytes:
            self.dropped += 1
            return
        self._bytes += size
        buffer.append((self.clock(), request_id, model, version, code, latency_s, answer))
        if len(buffer) >= self.threshold:
            self._wake.set()

    def pending(self) -> int:
        return len(self._buffer)

    def start(self) -> None:
        """Start the flusher on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Write what is left, stop the flusher and close the store."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        else:
            await self._flush_logged()
        if self._writer is not None:
            await self._in_writer(_close)
            self._writer.shutdown(wait=True)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            await self._flush_logged()
        await self._flush_logged()

    async def _flush_logged(self) -> None:
        # NOTE: the flusher must outlive a bad batch, or the buffer fills and every answer drops.
        try:
            await self.flush()
        except Exception:
            log.exception("the answer log could not flush a batch")

    def _take(self) -> deque[Pending]:
        batch, self._buffer = self._buffer, deque()
        self._bytes = 0
        return batch

    async def flush(self) -> int:
        """Hand the buffered answers to the writer process; how many were written."""
        batch = self._take()
        if not batch:
            return 0
        return self._count(await self._in_writer(_write, batch))

    async def feedback(self, model: str, request_id: str, truth: float) -> bool:
        """Store the truth of one request; whether its answer is known yet."""
        _, unmatched = await self.feedback_many(model, [(request_id, truth)])
        return unmatched == 0

    async def feedback_many(self, model: str, items: Sequence[tuple[str, float]],
                            subject: str = "") -> tuple[int, int]:
        """Store the truth of many requests: (recorded, unmatched).

        This process's buffered answers are written first, so they count as matched; answers
        still buffered in a sibling gateway process do not (they join at report time anyway).
        """
        batch = self._take()
        written, matched = await self._in_writer(_write_feedback, batch, model, list(items),
                                                 self.clock(), subject)
        self._count(written)
        return matched

    def _count(self, outcome: tuple[int, int]) -> int:
        """Add a write's (written, failed) to the counts; how many were written."""
        written, failed = outcome
        self.written += written
        self.failed += failed
        return written

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        if self._writer is None:
            self._writer = ProcessPoolExecutor(
                1, multiprocessing.get_context("spawn"), _start_writer, (self.path, self.limits))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)
        except BrokenProcessPool:
            # NOTE: a writer that died (killed, out of memory) is replaced at the next call.
            self._writer = None
            raise


# Everything below runs in the writer process.
_store: AnswerStore | None = None
_where: tuple[Path, tuple[int, int, int, int]] | None = None


def _start_writer(path: Path, limits: tuple[int, int, int, int]) -> None:
    """The writer process's set-up. The gateway's stop ends it, after a last flush: a signal
    to the whole process group must not end it first."""
    global _where
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _where = (path, limits)


def _open() -> AnswerStore:
    global _store
    if _store is None:
        assert _where is not None
        path, (keep, max_answers, per_caller, max_feedback) = _where
        _store = AnswerStore(path, keep, max_answers=max_answers, per_caller=per_caller,
                             max_feedback=max_feedback)
    return _store


def _write(batch: deque[Pending]) -> tuple[int, int]:
    """Parse and store a batch: (written, failed)."""
    rows = to_rows(batch)
    try:
        _open().write(rows)
    except (sqlite3.Error, OSError) as exc:
        log.warning("could not write %d answers to %s: %s", len(rows),
                    _where[0] if _where else "?", exc)
        return 0, len(rows)
    return len(rows), 0


def _write_feedback(batch: deque[Pending], model: str, items: Sequence[tuple[str, float]],
                    now: float, subject: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """The batch first, so its answers count as matched; then the truths: ((written, failed),
    (recorded, unmatched))."""
    written = _write(batch) if batch else (0, 0)
    # NOTE: errors here reach the caller (a 500), unlike answers: feedback is the caller's own.
    return written, _open().add_feedback(model, items, now, subject)


def _close() -> None:
    global _store
    if _store is not None:
        _store.close()
        _store = None
