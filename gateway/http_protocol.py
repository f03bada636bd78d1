"""uvicorn's httptools protocol with the limits a hostile client meets (deadlines for a request's
headers and body, an idle timeout from the first byte on, a header size cap, a connection cap),
HTTP infer answered straight from it (gateway/http_fast.py), its large bodies read into the lane
arena."""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from common.errors import TensorgateError
from gateway.http_deadline import Deadline
from gateway.http_fast import FastInfer
from gateway.http_server import HttpTransport, infer_target
from gateway.lane_refs import BY_REF_FROM_BYTES

#: Reads between requests take at most this much: a large infer body then mostly stays in the
#: socket until its caller is admitted, and is read straight into its arena slot after that.
HEAD_READ_BYTES = 16 * 1024
#: Reads within a body (one buffer per thread's event loop: no bytes outlive the read).
BODY_READ_BYTES = 256 * 1024
_buffers = threading.local()


def read_buffers() -> tuple[memoryview, memoryview]:
    """This thread's read buffer, whole and its first HEAD_READ_BYTES: the parser copies out
    all it keeps before the next read."""
    buffers = getattr(_buffers, "views", None)
    if buffers is None:
        whole = memoryview(bytearray(BODY_READ_BYTES))
        buffers = _buffers.views = (whole, whole[:HEAD_READ_BYTES])
    return buffers  # type: ignore[no-any-return]


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP connection may take; see GatewaySettings' http_* fields."""

    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    max_connections: int


class GuardedProtocol(HttpToolsProtocol):
    """One connection. uvicorn times only the wait between requests, and only after a first
    answer; a client trickling headers or a body, or sending nothing, would hold it forever.

    `POST /v2/models/{m}[/versions/{v}]/infer` skips ASGI: a FastInfer takes the place of
    uvicorn's request cycle, so pipelined requests of both kinds are still answered in order."""

    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.limits
        self._deadline = Deadline(self.loop, min(limits.header_timeout_s, limits.body_timeout_s,
                                                 self.timeout_keep_alive), self._expired)
        self._header_bytes = 0
        self._headers_too_large = False
        # NOTE: an app uvicorn wrapped (proxy headers, trace logging), or uvicorn's own
        # concurrency limit, keeps infer on ASGI, where those apply.
        self.fast = self.app if (isinstance(self.app, HttpTransport)
                                 and self.limit_concurrency is None) else None
        #: The infer request being answered, if any: cancelled when its client goes away.
        self._active: FastInfer | None = None
        #: The request whose body is read past the parser into its slot, and the bytes due.
        self._body_for: FastInfer | None = None
        self._body_left = 0
        self._in_body = False  # NOTE: between a request's headers and its last byte
        self._buffer, self._head = read_buffers()

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next read goes: the rest of an admitted body's slot, else this thread's
        buffer (a little of it between requests)."""
        if self._body_for is not None or self._slot_open():
            cycle = self._body_for
            assert cycle is not None  # NOTE: _slot_open sets it
            if cycle.slot is not None and cycle.accepts():
                return cycle.slot.rest()
            # NOTE: answered already: the rest is read and dropped
            return self._buffer[: min(self._body_left, BODY_READ_BYTES)]
        return self._buffer if self._in_body else self._head

    def buffer_updated(self, nbytes: int) -> None:
        if self._body_for is None:
            # NOTE: the parser takes any buffer, and copies out what it hands on
            self.data_received(self._buffer[:nbytes])  # type: ignore[arg-type]
            return
        cycle = self._body_for
        if cycle.slot is not None and cycle.accepts():  # NOTE: as get_buffer saw it just now
            cycle.landed(nbytes)
        self._body_done(nbytes)

    def _slot_open(self) -> bool:
        """Whether the request being read has a slot for the rest of its body: then the bytes
        the parser took so far are all in the slot, and the rest may go past it."""
        cycle: Any = self.cycle
        if type(cycle) is not FastInfer or cycle.slot is None or cycle.done:
            return False
        left = cycle.slot.due()
        if left > 0:
            self._body_for, self._body_left = cycle, left
        return left > 0

    def _body_done(self, taken: int) -> None:
        """``taken`` more bytes of the body read past the parser; at its last, the request is
        complete, and a fresh parser (the old one still counts the body) takes what follows."""
        self._body_left -= taken
        if self._body_left > 0:
            return
        self._body_for = None
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # NOTE: as uvicorn
        self.on_message_complete()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, f"this gateway process holds {self.limits.max_connections} "
                              "connections already; retry later")
            return
        self._arm(self.timeout_keep_alive, "idle")

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.close()
        super().connection_lost(exc)
        active = self._active
        if active is not None and not active.response_complete and active.task is not None:
            # NOTE: nobody will read the answer: the pipeline call ends, its lane slot freed.
            active.disconnected = True
            active.task.cancel()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm(self.limits.header_timeout_s, "headers")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_body = True
        target = self._infer_target()
        if target is None:
            super().on_headers_complete()
        else:
            self._start_fast(target)
        self._arm(self.limits.body_timeout_s, "body")

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle
        if type(cycle) is FastInfer:
            cycle.feed(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        cycle: Any = self.cycle
        if type(cycle) is FastInfer:
            cycle.complete()
        else:
            super().on_message_complete()
        if self.cycle.response_complete and not self.pipeline:
            self._arm(self.timeout_keep_alive, "idle")  # NOTE: answered before its body ended

    def on_response_complete(self) -> None:
        # NOTE: uvicorn's, less its keep-alive timer (a timer per answer): "idle" does its job.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._deadline.due is None and self.cycle.response_complete:
            self._arm(self.timeout_keep_alive, "idle")

    def _infer_target(self) -> tuple[str, str] | TensorgateError | None:
        """The infer call these headers start, or its refusal (a bad version); None: a request
        for ASGI."""
        if self.fast is None or not self.url.startswith(b"/v2/models/") or (
                self.parser.get_method() != b"POST" or self.parser.should_upgrade()):
            return None
        try:
            path = httptools.parse_url(self.url).path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            return None  # NOTE: uvicorn answers it as it always has
        if "%" in path:
            path = urllib.parse.unquote(path)  # NOTE: as uvicorn does for ASGI's scope
        try:
            return infer_target("POST", self.root_path + path)
        except TensorgateError as exc:
            return exc

    def _start_fast(self, target: tuple[str, str] | TensorgateError) -> None:
        """Start answering now, or queue behind the request still being answered."""
        assert self.fast is not None  # NOTE: _infer_target found one
        parser = self.parser
        request = FastInfer(self, self.fast, target, self.headers,
                            parser.get_http_version() != "1.0" and parser.should_keep_alive(),
                            self.expect_100_continue)
        previous, self.cycle = self.cycle, cast(Any, request)
        if previous is None or previous.response_complete:
            self._start_asgi_task(self.cycle, self.app)
            if self._large_body():
                # NOTE: the body waits in the socket until the task admitted its caller
                # (FastInfer.read resumes): then it is read straight into its slot.
                self.flow.pause_reading()
        else:
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

    def _large_body(self) -> bool:
        """Whether this request's body may get a slot of the lane arena (body_slot.place)."""
        if self.fast is None or self.fast.arena is None:
            return False
        for name, value in self.headers:
            if name == b"content-length":
                return value.isdigit() and int(value) >= BY_REF_FROM_BYTES
        return False

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if type(cycle) is not FastInfer:
            super()._start_asgi_task(cycle, app)
            return
        task = cycle.task = self.loop.create_task(cycle.run())
        self._active = cycle
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def send_400_response(self, msg: str) -> None:
        if self._headers_too_large:
            self._refuse(431, f"request line and headers exceed {self.limits.max_header_bytes} "
                              "bytes")
        else:
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            self._headers_too_large = True
            # NOTE: stops the parser; uvicorn answers it through send_400_response.
            raise httptools.HttpParserError("request headers too large")

    def _arm(self, seconds: float, part: str) -> None:
        """One deadline at a time; bytes that start no request (stray CRLFs) never move it."""
        if self.transport.is_closing():
            self._deadline.disarm()
        else:
            self._deadline.arm(seconds, part)

    def _disarm(self) -> None:
        self._deadline.disarm()

    def _expired(self, part: str, seconds: float) -> None:
        cycle = self.cycle
        if part == "idle" or (part == "body" and cycle is not None and cycle.response_started):
            self.transport.close()  # NOTE: nothing asked, or its answer is out already
            return
        self._refuse(408, f"request {part} not received within {seconds:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` and close, unless an answer is under way: then just close."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.close()
            return
        if cycle is not None and not cycle.response_complete:
            # NOTE: the handler still running sees a client gone, and writes nothing after us.
            cycle.disconnected = True
            cycle.message_event.set()
        body = orjson.dumps({"error": message})
        self.transport.write(b"%scontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (STATUS_LINE[status], len(body),
                                                                body))
        self.transport.close()


class Reader(asyncio.BufferedProtocol):
    """What the event loop sees of a GuardedProtocol: its methods, but as a BufferedProtocol,
    so reads land in the buffer it lends (uvloop lends none to an asyncio.Protocol)."""

    def __init__(self, connection: GuardedProtocol) -> None:
        # NOTE: bound once: the loop then calls the connection's own methods, with no hop.
        self.connection_made = connection.connection_made  # type: ignore[method-assign,assignment]
        self.connection_lost = connection.connection_lost  # type: ignore[method-assign]
        self.pause_writing = connection.pause_writing  # type: ignore[method-assign]
        self.resume_writing = connection.resume_writing  # type: ignore[method-assign]
        self.eof_received = connection.eof_received  # type: ignore[method-assign,assignment]
        self.get_buffer = connection.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = connection.buffer_updated  # type: ignore[method-assign]


def protocol_class(limits: HttpLimits) -> Callable[..., Reader]:
    """The protocol factory for uvicorn's `http` option, with these limits."""

    class Limited(GuardedProtocol):
        pass

    Limited.limits = limits

    def reader(**kwargs: Any) -> Reader:
        return Reader(Limited(**kwargs))

    return reader
