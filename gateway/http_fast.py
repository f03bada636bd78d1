"""HTTP infer without ASGI: one request on a GuardedProtocol connection, its body collected by the
protocol's parser callbacks and its whole answer written at once (gateway/http_protocol.py)."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Protocol

import grpc
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from common.errors import TensorgateError, invalid_argument
from common.wire import Buffer
from gateway.body_slot import BodySlot, place
from gateway.context import Headers
from gateway.http_body import Body
from gateway.http_codec import Raw
from gateway.http_server import HttpTransport, Reply, error_reply

log = logging.getLogger("tensorgate.gateway")
#: An answer up to this size is joined to its head and written as one piece; a larger one is
#: written as its parts (writelines), so its tensors are never copied into a new object.
JOIN_BELOW = 64 * 1024
#: What no header value may hold (uvicorn's rule): a caller's text must never split the head.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_INTERNAL = b"Internal Server Error"
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


class Connection(Protocol):
    """What a request needs of its connection (gateway/http_protocol.py's GuardedProtocol)."""

    transport: Any
    flow: Any
    server_state: Any

    def on_response_complete(self) -> None: ...


class FastInfer:
    """One infer request. It stands where uvicorn keeps a RequestResponseCycle (the protocol's
    `cycle` and its pipelined queue) and has the fields uvicorn and GuardedProtocol read there."""

    __slots__ = (
        "app",
        "chunks",
        "disconnected",
        "done",
        "error",
        "expect_100",
        "headers",
        "keep_alive",
        "limit",
        "protocol",
        "received",
        "response_complete",
        "response_started",
        "slot",
        "target",
        "task",
        "waiter",
        "wanted",
    )

    def __init__(self, protocol: Connection, app: HttpTransport,
                 target: tuple[str, str] | TensorgateError, headers: list[tuple[bytes, bytes]],
                 keep_alive: bool, expect_100: bool) -> None:
        self.protocol = protocol
        self.app = app
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.limit = app.max_body
        self.chunks: list[bytes] = []
        #: Where the body goes once its caller is admitted, when not into ``chunks``.
        self.slot: BodySlot | None = None
        self.received = 0
        self.done = False  # NOTE: the body's last byte arrived
        self.wanted = False  # NOTE: the caller was admitted: read its body at full speed
        self.error: TensorgateError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.disconnected = False
        self.response_started = False
        self.response_complete = False

    # What the parser callbacks give (through GuardedProtocol).

    def feed(self, chunk: bytes) -> None:
        """A piece of the body: kept within the limit; before its caller is admitted, reading
        pauses once a little is buffered, so a refused caller costs its headers only."""
        if self.response_complete or self.error is not None:
            return  # NOTE: answered (refused) already: the rest of the body is dropped
        self.received += len(chunk)
        if self.received > self.limit:
            self.chunks.clear()
            self._fail(invalid_argument(f"request body exceeds the limit of {self.limit} bytes"))
            return
        if self.slot is None:
            self.chunks.append(chunk)
        elif not self.slot.write(chunk):
            self._fail(invalid_argument("request body is longer than its Content-Length"))
        if not self.wanted and self.received > HIGH_WATER_LIMIT:
            self.protocol.flow.pause_reading()

    def accepts(self) -> bool:
        """Whether more of the body is wanted: not once the request was answered or failed."""
        return not self.response_complete and self.error is None

    def landed(self, size: int) -> None:
        """``size`` more bytes of the body were read straight into the slot's free end."""
        assert self.slot is not None  # NOTE: GuardedProtocol lent the slot for the read
        self.received += size
        self.slot.landed(size)

    def complete(self) -> None:
        self.done = True
        self._wake()

    @property
    def message_event(self) -> FastInfer:
        """uvicorn and GuardedProtocol wake a cycle's reader with `cycle.message_event.set()`
        when its client went away (or timed out): here the body's reader."""
        return self

    def set(self) -> None:
        if self.disconnected:
            self._fail(TensorgateError(grpc.StatusCode.CANCELLED,
                                       "the client went away before its request body arrived"))
        self._wake()

    def _fail(self, error: TensorgateError) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The request's task.

    async def read(self, headers: Headers) -> Buffer:
        """The body, once the pipeline admitted the caller: Body's checks on the headers first
        (nothing read yet), then 100 Continue if asked for, then the bytes, inflated; a large
        one written into the lane arena as it comes (gateway/body_slot.py)."""
        body = Body(None, headers, self.limit)
        body.check()
        transport = self.protocol.transport
        if self.expect_100 and not self.done and not transport.is_closing():
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.expect_100 = False
        self.wanted = True
        slot = self.slot = place(self.app.arena, headers, body.encoding)
        if slot is not None:
            chunks, self.chunks = self.chunks, []
            for chunk in chunks:
                slot.write(chunk)  # NOTE: within the declared length, or llhttp had refused it
        if not self.done and self.error is None:
            self.protocol.flow.resume_reading()
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        if self.error is not None:
            raise self.error
        if slot is not None:
            return slot.body()
        chunks, self.chunks = self.chunks, []
        return body.whole(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    async def run(self) -> None:
        """Answer the request: the pipeline's answer or the refusal, written in one go."""
        target = self.target
        try:
            if isinstance(target, TensorgateError):
                reply = error_reply(target)
            else:
                reply = await self.app.answer(target, self.headers, self.read)
        except Exception:  # NOTE: a bug, not a caller's fault: logged, answered 500
            log.exception("HTTP infer failed")
            reply = 500, [_INTERNAL], _TEXT
            self.keep_alive = False
        finally:
            if self.slot is not None:  # NOTE: the call has ended: no lane reads the body now
                self.slot.release()
                self.slot = None
        flow = self.protocol.flow
        if flow.write_paused and not self.disconnected:
            await flow.drain()  # NOTE: a client not reading its answers gets no more
        self.write(reply)

    def write(self, reply: Reply) -> None:
        """Status line, headers and body with one write (or one writelines)."""
        transport = self.protocol.transport
        if self.disconnected or transport.is_closing():
            return  # NOTE: the client is gone, or was answered 408 and is being closed
        status, parts, extra = reply
        size = sum(len(part) for part in parts)
        head = [STATUS_LINE[status]]
        for name, value in (*self.protocol.server_state.default_headers, *extra):
            if _BAD_VALUE.search(value):
                log.error("HTTP infer: header %r has a control character; answered 500", name)
                return self.write((500, [_INTERNAL], _TEXT))
            head += (name, b": ", value, b"\r\n")
        head.append(b"content-length: %d\r\n" % size)
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if size < JOIN_BELOW:
            transport.write(b"".join([*head, *parts]))
        else:
            pieces: list[Raw] = [b"".join(head), *parts]
            transport.writelines(pieces)
        self.response_started = self.response_complete = True
        if not self.keep_alive:
            transport.close()
        self.protocol.on_response_complete()
