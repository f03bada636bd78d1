"""uvicorn's httptools protocol with the limits a hostile client meets (deadlines for a request's
headers and body, an idle timeout from the first byte on, a header size cap, a connection cap),
and HTTP infer answered straight from it, without ASGI (gateway/http_fast.py)."""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from common.errors import TensorgateError
from gateway.http_deadline import Deadline
from gateway.http_fast import FastInfer
from gateway.http_server import HttpTransport, infer_target


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
        else:
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

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


def protocol_class(limits: HttpLimits) -> type[GuardedProtocol]:
    """The protocol class for uvicorn's `http` option, with these limits."""

    class Limited(GuardedProtocol):
        pass

    Limited.limits = limits
    return Limited
