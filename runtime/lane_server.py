"""The runtime's end of the lane: frames in, the core's table of RPCs, frames out.

Answers finished in one turn of the event loop leave in one write.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from common import lane
from common.errors import TensorgateError, invalid_argument
from runtime.core import RuntimeCore

log = logging.getLogger("tensorgate.runtime")


class LaneServer(asyncio.BufferedProtocol):
    """One gateway connection; the kernel writes large requests straight into their own buffer
    (lane.FrameBuffer), which the decode stage reads in place."""

    def __init__(self, core: RuntimeCore, max_payload: int) -> None:
        self.core = core
        self.frames = lane.FrameBuffer(max_payload)
        self.handlers = [core.methods[name] for name in lane.METHODS]
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for task in self.tasks:
            task.cancel()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.frames.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frames = self.frames.received(nbytes)
        except ValueError as exc:
            log.warning("closing a lane connection: %s", exc)
            assert self.transport is not None
            self.transport.close()
            return
        for call_id, kind, timeout, payload in frames:
            task = self.loop.create_task(self.answer(call_id, kind, timeout, payload))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def answer(self, call_id: int, kind: int, timeout_us: int,
                     payload: bytes | bytearray | memoryview) -> None:
        try:
            if kind >= len(self.handlers):
                raise invalid_argument(f"unknown lane call kind {kind}")
            decode, handler = self.handlers[kind]
            request = decode(payload)
            response = await handler(request, timeout_us / 1e6 if timeout_us else None)
            self.send(call_id, lane.OK, response.SerializeToString())
        except TensorgateError as exc:
            self.send(call_id, lane.ERROR, lane.error_payload(exc))
        except DecodeError as exc:
            self.send(call_id, lane.ERROR, lane.error_payload(
                invalid_argument(f"malformed {lane.METHODS[kind]} request: {exc}")))
        except Exception as exc:
            # NOTE: every call gets an answer, so no gateway caller waits for its deadline.
            log.exception("lane call %s failed", lane.METHODS[kind])
            self.send(call_id, lane.ERROR, lane.error_payload(
                TensorgateError(grpc.StatusCode.INTERNAL, f"runtime error: {exc}")))

    def send(self, call_id: int, kind: int, payload: bytes) -> None:
        if self.transport is None:
            return
        if not self.out:
            self.loop.call_soon(self.flush)
        self.out.append(lane.header(call_id, kind, len(payload)))
        self.out.append(payload)

    def flush(self) -> None:
        if self.transport is not None and self.out:
            self.transport.writelines(self.out)
        self.out = []
