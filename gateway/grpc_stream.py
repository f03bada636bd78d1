"""gRPC ModelStreamInfer: each ModelInferRequest on the stream goes through the same pipeline as
ModelInfer; answers come back in the order asked, a failure in that message's `error_message`.
No model here is decoupled (one answer per request), so no message is refused for being one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc

from common import memory
from common.errors import TensorgateError
from common.wire import length_delimited
from gateway.context import Headers, RequestContext
from gateway.peek import infer_fields
from gateway.pipeline import Pipeline

log = logging.getLogger("tensorgate.gateway")

#: Messages of one stream in the pipeline at once: the next is read only when one is answered.
WINDOW = 16
# ModelStreamInferResponse: error_message = 1, infer_response = 2; ModelInferResponse:
# model_name = 1, model_version = 2, id = 3.
_ERROR, _ANSWER = 1, 2
_NAME, _VERSION, _ID = 1, 2, 3


def deadline(parameter: float | None, remaining: float | None) -> float | None:
    """The smaller of the `timeout` parameter and the call's deadline; None: neither is set."""
    if parameter is None:
        return remaining
    return parameter if remaining is None else min(parameter, remaining)


def answered(answer: bytes) -> bytes:
    """A ModelStreamInferResponse around the worker's answer, its bytes untouched."""
    return length_delimited(_ANSWER, answer)


def failed(message: str, model: str, version: str, request_id: str) -> bytes:
    """A ModelStreamInferResponse carrying an error, and the request's model, version and id."""
    infer = b"".join(length_delimited(n, v.encode()) for n, v in
                     ((_NAME, model), (_VERSION, version), (_ID, request_id)) if v)
    answer = length_delimited(_ANSWER, infer) if infer else b""
    return length_delimited(_ERROR, message.encode()) + answer


class Stream:
    """One ModelStreamInfer call: a reader starts each message, the writer answers in order."""

    def __init__(self, pipeline: Pipeline, trimmer: memory.Trimmer, context: Any,
                 headers: Headers) -> None:
        self.pipeline = pipeline
        self.trimmer = trimmer
        self.context = context
        self.headers = headers
        self.window = asyncio.Semaphore(WINDOW)
        self.started: asyncio.Queue[asyncio.Future[bytes] | None] = asyncio.Queue()

    async def run(self) -> None:
        reader = asyncio.ensure_future(self._read())
        try:
            while (answer := await self.started.get()) is not None:
                await self.context.write(await answer)
                self.window.release()
            await reader  # its error, if it had one
        finally:
            reader.cancel()
            while not self.started.empty():
                left = self.started.get_nowait()
                if left is not None:
                    left.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self) -> None:
        try:
            while True:
                await self.window.acquire()
                request = await self.context.read()
                if request is grpc.aio.EOF:
                    return
                self.started.put_nowait(asyncio.ensure_future(self._one(request)))
        finally:
            self.started.put_nowait(None)

    async def _one(self, request: bytes) -> bytes:
        model = version = request_id = ""
        try:
            model, version, request_id, timeout = infer_fields(request)
            call = RequestContext(model, version, "grpc", self.headers, request_id,
                                  deadline(timeout, self.context.time_remaining()))
            return answered(await self.pipeline.infer(call, request))
        except TensorgateError as exc:
            return failed(exc.message, model, version, request_id)
        except Exception:  # NOTE: one message's fault ends neither the stream nor its others
            log.exception("stream message for model %r failed", model)
            return failed("internal error: see the gateway's log", model, version, request_id)
        finally:
            if len(request) >= memory.TRIM_AFTER_BYTES:
                self.trimmer.request()
