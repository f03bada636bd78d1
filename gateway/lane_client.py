"""The gateway's end of the lane: one connection per runtime worker, calls matched by id.

Requests issued in one turn of the event loop leave in one write; a lost connection fails
every call in flight at once with UNAVAILABLE, and the next call reconnects.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

import grpc

from common import lane
from common.errors import TensorgateError, unavailable

log = logging.getLogger("tensorgate.gateway")


class _Connection(asyncio.Protocol):
    def __init__(self, address: str, max_payload: int) -> None:
        self.address = address
        self.reader = lane.FrameReader(max_payload)
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.on_lost: Callable[[], None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.on_lost is not None:
            # NOTE: before the calls fail, so their retries already avoid this worker.
            self.on_lost()
        # NOTE: the address (a socket path, a host) goes to the log only, never to a caller.
        if self.pending:
            log.warning("runtime worker %s closed the connection with %d calls in flight%s",
                        self.address, len(self.pending), f": {exc}" if exc else "")
        error = unavailable("a runtime worker closed the connection")
        pending, self.pending = self.pending, {}
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
        for call_id, kind, _, payload in frames:
            future = self.pending.pop(call_id, None)
            if future is None or future.done():
                continue
            if kind == lane.OK:
                future.set_result(payload)
            else:
                future.set_exception(lane.parse_error(payload))

    def send(self, kind: int, payload: bytes, timeout: float | None) -> asyncio.Future:
        if self.transport is None:
            raise unavailable("a runtime worker is not connected")
        call_id = next(self.ids)
        future = self.loop.create_future()
        self.pending[call_id] = future
        if not self.out:
            self.loop.call_soon(self.flush)
        self.out.append(lane.header(call_id, kind, len(payload), lane.timeout_us(timeout)))
        self.out.append(payload)
        return future

    def flush(self) -> None:
        if self.transport is not None and self.out:
            self.transport.writelines(self.out)
        self.out = []

    def expire(self, future: asyncio.Future, timeout: float) -> None:
        """A call's deadline passed with no answer: fail it and stop waiting for one."""
        if future.done():
            return
        future.set_exception(TensorgateError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the runtime worker did not answer within {timeout:.3f}s"))
        for call_id, pending in self.pending.items():
            if pending is future:
                del self.pending[call_id]
                return


class LaneUpstream:
    """Calls to one runtime worker over the lane; same interface as the gRPC upstream."""

    def __init__(self, address: str, max_message_bytes: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.address = address
        self.outstanding = 0
        self.max_payload = max_message_bytes
        self.ssl_context = ssl_context
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future | None = None
        #: Called when an open connection is lost (health ejects the worker); None: nothing.
        self.on_lost: Callable[[], None] | None = None

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
        loop = asyncio.get_running_loop()
        factory = lambda: _Connection(self.address, self.max_payload)  # noqa: E731
        try:
            if self.address.startswith("unix:"):
                _, protocol = await loop.create_unix_connection(factory, self.address[5:])
            else:
                host, _, port = self.address.rpartition(":")
                _, protocol = await loop.create_connection(factory, host, int(port),
                                                           ssl=self.ssl_context)
        except OSError as exc:
            log.warning("runtime worker %s is unavailable: %s", self.address, exc)
            # NOTE: the errno's own text only: asyncio's and str(exc) name the path or address.
            why = os.strerror(exc.errno) if exc.errno else "cannot connect"
            raise unavailable(f"a runtime worker is unavailable: {why}") from None
        self._connection = protocol
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

    async def call(self, name: str, request: bytes, timeout: float | None) -> bytes:
        connection = self._connection
        if connection is None or connection.transport is None:
            connection = await self._connect_within(timeout)
        future = connection.send(lane.METHOD_KIND[name], request, timeout)
        # NOTE: counted only once sent: send raises when the connection is already gone.
        self.outstanding += 1
        # NOTE: a timer, not asyncio.wait_for: no extra future and task per call.
        timer = None if timeout is None else connection.loop.call_later(
            timeout, connection.expire, future, timeout)
        try:
            return await future
        finally:
            self.outstanding -= 1
            if timer is not None:
                timer.cancel()

    def abort(self) -> None:
        """Drop the connection at once: its calls in flight fail with UNAVAILABLE."""
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.abort()

    async def close(self) -> None:
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.close()
