"""The gateway's end of the lane: one connection per runtime worker, calls matched by id.

A turn of the event loop's requests leave in writes of up to eight; a lost connection fails
every call in flight at once with UNAVAILABLE, and the next call reconnects. Each connection
opens with a HELLO of the lane's version; on a unix lane it carries this process's arena, and
large tensors then travel by reference (lane_refs.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

import grpc

from common import lane, lane_socket
from common.arena import Arena, Mapping
from common.errors import TensorgateError, unavailable
from gateway import lane_refs
from gateway.request_parts import Request, whole

log = logging.getLogger("tensorgate.gateway")
#: The event loop's timers tick in milliseconds: one may fire this much before its time.
_EARLY_S = 0.001
#: A turn's calls leave in writes of at most this many, so the runtime starts on the first
#: while this loop is still reading the rest (docs/performance.md, "The lane").
FLUSH_CALLS = 8


class _Connection(asyncio.Protocol):
    def __init__(self, address: str, max_payload: int, out: Mapping | None = None,
                 greeted: bool = False) -> None:
        self.address = address
        self.reader = lane.FrameReader(max_payload)
        self.pending: dict[int, asyncio.Future] = {}
        #: The calls with a deadline: (when, by the loop's clock; the timeout, for the message).
        self.deadlines: dict[int, tuple[float, float]] = {}
        # NOTE: one timer, at the earliest deadline, rather than one per call: arming and
        # cancelling a timer costs more than the rest of a call's bookkeeping.
        self._alarm: asyncio.TimerHandle | None = None
        self._alarm_at = math.inf
        self.ids = itertools.count(1)
        self.out: list[Any] = []
        self.queued = 0  # NOTE: the calls in `out`
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.on_lost: Callable[[], None] | None = None
        #: The runtime's arena for large answers (unix lanes), and its slots copied out since
        #: the last write: they go back in a RELEASE frame with the next one.
        self.answers = out
        self.released: list[int] = []
        #: Done when the runtime's HELLO answer came (a TCP lane's; a unix lane's came before).
        self.hello: asyncio.Future = self.loop.create_future()
        if greeted:
            self.hello.set_result(None)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if not self.hello.done():
            transport.write(lane.hello({"offers": []}))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.hello.done():
            self.hello.set_exception(unavailable("a runtime worker closed the connection "
                                                 "before its lane hello"))
        if self.answers is not None:
            self.answers.close()
            self.answers = None
        if self.on_lost is not None:
            # NOTE: before the calls fail, so their retries already avoid this worker.
            self.on_lost()
        # NOTE: the address (a socket path, a host) goes to the log only, never to a caller.
        if self.pending:
            log.warning("runtime worker %s closed the connection with %d calls in flight%s",
                        self.address, len(self.pending), f": {exc}" if exc else "")
        error = unavailable("a runtime worker closed the connection")
        pending, self.pending = self.pending, {}
        self.deadlines.clear()
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm, self._alarm_at = None, math.inf
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except ValueError:
            assert self.transport is not None
            self.transport.close()
            return
        for frame in frames:
            if not self.hello.done():
                self._greeted(frame)
                continue
            call_id, kind, _, payload = frame
            if kind == lane.OK_REF:
                kind, payload = self._copy_out(payload)
            future = self.pending.pop(call_id, None)
            self.deadlines.pop(call_id, None)
            if future is None or future.done():
                continue
            if kind == lane.OK:
                future.set_result(payload)
            else:
                future.set_exception(lane.parse_error(payload))

    def _greeted(self, frame: lane.Frame) -> None:
        try:
            lane_refs.check_answer(frame)
        except TensorgateError as exc:
            self.hello.set_exception(exc)
            assert self.transport is not None
            self.transport.close()
            return
        self.hello.set_result(None)

    def _copy_out(self, payload: lane.Buffer) -> tuple[int, bytes]:
        """An answer by reference as (OK, the ordinary response bytes); its slot is released
        at once, also when nobody waits for the answer any more."""
        try:
            answer, slot = lane_refs.response_bytes(payload, self.answers)
        except ValueError as exc:
            log.error("runtime worker %s answered by reference wrongly: %s", self.address, exc)
            return lane.ERROR, lane.error_payload(TensorgateError(
                grpc.StatusCode.INTERNAL, f"a runtime worker's answer is malformed: {exc}"))
        if slot is not None:
            if not self.out and not self.released:
                self.loop.call_soon(self.flush)
            self.released.append(slot)
        return lane.OK, answer

    def send(self, kind: int, payload: bytes, timeout: float | None) -> asyncio.Future:
        return self.send_parts(kind, [payload], len(payload), timeout)

    def send_parts(self, kind: int, parts: list[Any], size: int,
                   timeout: float | None) -> asyncio.Future:
        if self.transport is None:
            raise unavailable("a runtime worker is not connected")
        call_id = next(self.ids)
        future = self.loop.create_future()
        self.pending[call_id] = future
        if timeout is not None:
            self._watch(call_id, timeout)
        if not self.out and not self.released:
            self.loop.call_soon(self.flush)
        self.out.append(lane.header(call_id, kind, size, lane.timeout_us(timeout)))
        self.out += parts
        self.queued += 1
        if self.queued >= FLUSH_CALLS:
            self.flush()
        return future

    def flush(self) -> None:
        if self.transport is not None and self.released:
            offsets = b"".join(lane.OFFSET.pack(slot) for slot in self.released)
            self.out += [lane.header(0, lane.RELEASE, len(offsets)), offsets]
        if self.transport is not None and self.out:
            self.transport.writelines(self.out)
        self.out, self.released, self.queued = [], [], 0

    def _watch(self, call_id: int, timeout: float) -> None:
        """Fail the call if no answer came within `timeout` seconds."""
        when = self.loop.time() + timeout
        self.deadlines[call_id] = (when, timeout)
        if when < self._alarm_at:
            if self._alarm is not None:
                self._alarm.cancel()
            self._alarm_at = when
            self._alarm = self.loop.call_at(when, self._expire_due)

    def _expire_due(self) -> None:
        """The earliest deadline came: fail every call past its own, and wait for the next."""
        self._alarm, self._alarm_at = None, math.inf
        now = self.loop.time() + _EARLY_S
        due = [call_id for call_id, (when, _) in self.deadlines.items() if when <= now]
        for call_id in due:
            _, timeout = self.deadlines.pop(call_id)
            future = self.pending.pop(call_id, None)
            if future is not None and not future.done():
                future.set_exception(TensorgateError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the runtime worker did not answer within {timeout:.3f}s"))
        if self.deadlines:
            self._alarm_at = min(when for when, _ in self.deadlines.values())
            self._alarm = self.loop.call_at(self._alarm_at, self._expire_due)


class LaneUpstream:
    """Calls to one runtime worker over the lane; same interface as the gRPC upstream.
    ``arena``: this process's arena, offered on unix lanes; None: everything by value."""

    def __init__(self, address: str, max_message_bytes: int,
                 ssl_context: ssl.SSLContext | None = None, arena: Arena | None = None) -> None:
        self.address = address
        self.outstanding = 0
        self.max_payload = max_message_bytes
        self.ssl_context = ssl_context
        self.arena = arena if address.startswith("unix:") else None
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future | None = None
        #: Called when an open connection is lost (health ejects the worker); None: nothing.
        self.on_lost: Callable[[], None] | None = None
        self._refused = ""
        #: A TCP connection waiting for the runtime's hello, so abort() cuts it too.
        self._dialing: _Connection | None = None

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._opened)
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> _Connection:
        try:
            protocol = await asyncio.wait_for(self._dial(), lane.HELLO_TIMEOUT_S)
        except asyncio.TimeoutError:  # NOTE: before OSError, of which it is a kind
            raise unavailable("a runtime worker did not answer the lane hello within "
                              f"{lane.HELLO_TIMEOUT_S:g}s") from None
        except OSError as exc:
            log.warning("runtime worker %s is unavailable: %s", self.address, exc)
            # NOTE: the errno's own text only: asyncio's and str(exc) name the path or address.
            why = os.strerror(exc.errno) if exc.errno else "cannot connect"
            raise unavailable(f"a runtime worker is unavailable: {why}") from None
        except TensorgateError as exc:
            if exc.message != self._refused:  # NOTE: once, not at every probe's reconnect
                self._refused = exc.message
                log.error("runtime worker %s refused: %s", self.address, exc.message)
            raise
        finally:
            self._dialing = None
        self._connection = protocol
        return protocol

    async def _dial(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self.address.startswith("unix:"):
            return await self._dial_unix(loop, self.address[5:])
        host, _, port = self.address.rpartition(":")
        factory = lambda: _Connection(self.address, self.max_payload)  # noqa: E731
        transport, protocol = await loop.create_connection(factory, host, int(port),
                                                           ssl=self.ssl_context)
        self._dialing = protocol
        try:
            await protocol.hello
        except BaseException:
            transport.close()
            raise
        return protocol

    async def _dial_unix(self, loop: asyncio.AbstractEventLoop, path: str) -> _Connection:
        """The hello on the raw socket: our arena's memfd goes with it, the runtime's comes
        back with its answer; then asyncio takes the socket over."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, path)
            offer: dict[str, Any] = {"offers": []}
            if self.arena is not None:
                offer = {"offers": ["arena"], "arena_bytes": self.arena.size}
            await lane_socket.send_frame(sock, lane.hello(offer),
                                         [self.arena.fd] if self.arena is not None else [])
            frame, fds = await lane_socket.recv_frame(sock)
            out = lane_refs.answer_arena(frame, fds)
            factory = lambda: _Connection(self.address, self.max_payload, out, True)  # noqa: E731
            _, protocol = await loop.create_unix_connection(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
        return protocol

    async def _connect_within(self, timeout: float | None) -> _Connection:
        """Connect, within the call's deadline: a host that drops packets never refuses."""
        if timeout is None:
            return await self._connect()
        try:
            return await asyncio.wait_for(self._connect(), timeout)
        except asyncio.TimeoutError:
            raise TensorgateError(grpc.StatusCode.DEADLINE_EXCEEDED, (
                f"a runtime worker did not accept a connection within {timeout:.3f}s")) from None

    def _opened(self, opening: asyncio.Future) -> None:
        if not opening.cancelled() and opening.exception() is None:
            opening.result().on_lost = self._lost

    def _lost(self) -> None:
        if self.on_lost is not None:
            self.on_lost()

    async def call(self, name: str, request: Request, timeout: float | None) -> bytes:
        connection = self._connection
        if connection is None or connection.transport is None:
            connection = await self._connect_within(timeout)
        arena, slot = self.arena, None
        if (arena is not None and connection.answers is not None
                and len(request) >= lane_refs.BY_REF_FROM_BYTES and name == "ModelInfer"):
            future, slot = lane_refs.send_infer(connection, arena, request, timeout)
        elif name == "ModelInfer":
            future = lane_refs.send_by_value(connection, request, timeout)
        else:
            future = connection.send(lane.METHOD_KIND[name], whole(request), timeout)
        # NOTE: counted only once sent: send raises when the connection is already gone.
        self.outstanding += 1
        try:
            return await future
        finally:
            self.outstanding -= 1
            if arena is not None and slot is not None:
                # NOTE: freed when the call ends however it ends (answer, deadline, cancel, a
                # lost connection). The runtime only reads inputs, so one still reading an
                # abandoned call's slot after it is reused can spoil only that call's answer,
                # which nobody waits for any more.
                arena.release(slot)

    def abort(self) -> None:
        """Drop the connection at once: its calls in flight fail with UNAVAILABLE."""
        for connection in (self._connection, self._dialing):
            if connection is not None and connection.transport is not None:
                connection.transport.abort()

    async def close(self) -> None:
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.close()
