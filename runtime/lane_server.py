"""The runtime's end of the lane: frames in, the core's table of RPCs, frames out.

Answers finished in one turn of the event loop leave in one write. The first frame must be the
gateway's HELLO of this lane version; on a unix lane it came on the raw socket (lane_listen.py)
with the gateway's arena, and requests may then carry their tensors by reference.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from common import lane
from common.arena import ALIGN, Arena, Mapping
from common.errors import TensorgateError, invalid_argument, unavailable
from runtime.core import RuntimeCore
from runtime.decode import decode_infer, decode_infer_refs
from runtime.response import build_response
from runtime.scheduler import Ticket

log = logging.getLogger("tensorgate.runtime")
#: Answers whose tensors total this much go through the output arena; below, by value.
OUT_BY_REF_FROM_BYTES = 16 * 1024
_INFER = lane.METHOD_KIND["ModelInfer"]
#: Refusals already logged: a gateway that keeps reconnecting is logged once per reason.
_logged: set[str] = set()
MAX_LOGGED = 64


@dataclass
class Greeting:
    """What a unix lane's hello brought: the gateway's arena, and ours for answers."""

    arena: Mapping | None = None
    out: Arena | None = None


class Refused(Exception):
    """A hello refused: the text goes to the log once and to the gateway as an ERROR frame."""

    def __init__(self, call_id: int, message: str) -> None:
        super().__init__(message)
        self.call_id, self.message = call_id, message

    def frame(self) -> bytes:
        payload = lane.error_payload(unavailable(self.message))
        return lane.header(self.call_id, lane.ERROR, len(payload)) + payload

    def log(self) -> None:
        if self.message not in _logged:
            if len(_logged) < MAX_LOGGED:  # NOTE: a peer's version is its own to invent
                _logged.add(self.message)
            log.error("lane connection refused: %s", self.message)


def check_hello(frame: lane.Frame) -> dict[str, Any]:
    """The features of a gateway's hello; Refused for any other first frame (a gateway of an
    older release sends a call first) and for another version."""
    call_id, kind, _, payload = frame
    if kind != lane.HELLO:
        raise Refused(call_id, lane.mismatch("1 (it sent no hello)", lane.VERSION))
    try:
        version, features = lane.parse_hello(payload)
    except ValueError as exc:
        raise Refused(call_id, f"malformed lane hello: {exc}") from None
    if version != lane.VERSION:
        raise Refused(call_id, lane.mismatch(version, lane.VERSION))
    return features


class LaneServer(asyncio.BufferedProtocol):
    """One gateway connection; the kernel writes large requests straight into their own buffer
    (lane.FrameBuffer), which the decode stage reads in place."""

    def __init__(self, core: RuntimeCore, max_payload: int,
                 greeting: Greeting | None = None) -> None:
        self.core = core
        self.frames = lane.FrameBuffer(max_payload)
        self.handlers = [core.methods[name] for name in lane.METHODS]
        self.transport: asyncio.Transport | None = None
        self.out: list[Any] = []
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task] = set()
        #: The infer calls queued without a task (call id → ticket), cancelled if we go.
        self.waiting: dict[int, Ticket] = {}
        #: A TCP lane's hello comes as its first frame; a unix lane's came before.
        self.greeted = greeting is not None
        self.arena = greeting.arena if greeting else None
        self.out_arena = greeting.out if greeting else None
        self.hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if not self.greeted:
            self.hello_timer = self.loop.call_later(lane.HELLO_TIMEOUT_S, self._no_hello)

    def _no_hello(self) -> None:
        if not self.greeted and self.transport is not None:
            log.warning("lane connection dropped before its hello: none came in time")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        for task in self.tasks:
            task.cancel()
        # NOTE: a cancelled Promise calls _answered at once, which takes its call off `waiting`.
        waiting, self.waiting = self.waiting, {}
        for ticket in waiting.values():
            ticket.future.cancel()  # NOTE: a queued request leaves its queue unrun
        # NOTE: a dead gateway's arena goes with its last mapping: the kernel frees the memfd.
        for held in (self.arena, self.out_arena):
            if held is not None:
                held.close()
        self.arena = self.out_arena = None

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
        for frame in frames:
            call_id, kind, timeout, payload = frame
            if not self.greeted:
                if not self._greet(frame):
                    return
            elif kind == lane.RELEASE:
                self._release(payload)
            elif kind == _INFER or kind == lane.INFER_REF:
                self._infer(call_id, kind, timeout, payload)
            else:
                task = self.loop.create_task(self.answer(call_id, kind, timeout, payload))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    def _greet(self, frame: lane.Frame) -> bool:
        """A TCP lane's first frame; False when it was refused and the connection closed."""
        assert self.transport is not None
        try:
            check_hello(frame)
        except Refused as refused:
            refused.log()
            self.transport.write(refused.frame())
            self.transport.close()
            return False
        self.transport.write(lane.hello({"accepts": []}))
        self.greeted = True
        return True

    def _release(self, payload: bytes | bytearray | memoryview) -> None:
        """The gateway copied these answers out: their output slots are free again."""
        arena, count = self.out_arena, len(payload) // lane.OFFSET.size
        freed = 0 if arena is None else sum(
            arena.release(lane.OFFSET.unpack_from(payload, i * lane.OFFSET.size)[0])
            for i in range(count))
        if freed < count:
            log.warning("the gateway released %d output slots not in use", count - freed)

    def _infer(self, call_id: int, kind: int, timeout_us: int, payload: lane.Buffer) -> None:
        """A ModelInfer queued at once, with no task of its own: its answer is sent from its
        future's callback. Requests that need more (regions, tracing) go to `answer`."""
        timeout = timeout_us / 1e6 if timeout_us else None
        try:
            call = (decode_infer_refs(payload, self.arena) if kind == lane.INFER_REF
                    else decode_infer(payload))
            ticket = self.core.submit(call, timeout)
        except Exception as exc:
            self._fail(call_id, "ModelInfer", exc)
            return
        if ticket is None:
            task = self.loop.create_task(self._answer(call_id, kind, self.handlers[_INFER][1],
                                                      call, timeout))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        # NOTE: a gateway that reuses a call id in flight would orphan the first; it never does.
        self.waiting[call_id] = ticket
        ticket.future.add_done_callback(partial(self._answered, call_id, ticket))

    def _answered(self, call_id: int, ticket: Ticket, _: asyncio.Future) -> None:
        if self.waiting.get(call_id) is ticket:
            del self.waiting[call_id]
        try:
            outputs = self.core.settle(ticket)
        except asyncio.CancelledError:
            return  # the connection went: nobody to answer
        except Exception as exc:
            self._fail(call_id, "ModelInfer", exc)
            return
        try:
            # NOTE: large outputs go from the batch's output array straight into the arena.
            refs = self._place([out.raw for out in outputs])
            response = build_response(ticket.message, ticket.scheduler.model, outputs,
                                      with_raw=refs is None)
            if refs is None:
                self.send(call_id, lane.OK, response.SerializeToString())
            else:
                self._queue(lane.refs_frame(call_id, lane.OK_REF, refs,
                                            response.SerializeToString()))
        except Exception as exc:
            self._fail(call_id, "ModelInfer", exc)

    async def answer(self, call_id: int, kind: int, timeout_us: int,
                     payload: bytes | bytearray | memoryview) -> None:
        name = lane.METHODS[kind] if kind < len(lane.METHODS) else "ModelInfer"
        try:
            if kind == lane.INFER_REF:
                request: Any = decode_infer_refs(payload, self.arena)
                handler = self.handlers[_INFER][1]
            elif kind < len(self.handlers):
                decode, handler = self.handlers[kind]
                request = decode(payload)
            else:
                raise invalid_argument(f"unknown lane call kind {kind}")
        except Exception as exc:
            self._fail(call_id, name, exc)
            return
        timeout = timeout_us / 1e6 if timeout_us else None
        await self._answer(call_id, kind, handler, request, timeout)

    async def _answer(self, call_id: int, kind: int, handler: Any, request: Any,
                      timeout: float | None) -> None:
        name = lane.METHODS[kind] if kind < len(lane.METHODS) else "ModelInfer"
        try:
            response = await handler(request, timeout)
            if kind not in (_INFER, lane.INFER_REF) or not self._send_refs(call_id, response):
                self.send(call_id, lane.OK, response.SerializeToString())
        except Exception as exc:
            self._fail(call_id, name, exc)

    def _fail(self, call_id: int, name: str, exc: Exception) -> None:
        """Every call gets an answer, so no gateway caller waits for its deadline."""
        if isinstance(exc, TensorgateError):
            error = exc
        elif isinstance(exc, (DecodeError, ValueError)):
            error = invalid_argument(f"malformed {name} request: {exc}")
        else:
            log.error("lane call %s failed", name, exc_info=exc)
            error = TensorgateError(grpc.StatusCode.INTERNAL, f"runtime error: {exc}")
        self.send(call_id, lane.ERROR, lane.error_payload(error))

    def _send_refs(self, call_id: int, response: Any) -> bool:
        """Answer with the outputs' bytes in our arena; False (nothing sent) when they are
        small or the arena is full: the work is done, so a by-value answer is the fallback."""
        raw = response.raw_output_contents
        refs = self._place(list(raw))
        if refs is None:
            return False
        del raw[:]
        self._queue(lane.refs_frame(call_id, lane.OK_REF, refs, response.SerializeToString()))
        return True

    def _place(self, pieces: list[Any]) -> list[tuple[int, int]] | None:
        """Write the outputs' bytes into one slot of our arena: their (offset, length) refs;
        None, nothing written, when they are small or the arena is full."""
        arena = self.out_arena
        if arena is None or self.transport is None:
            return None
        sizes = [len(piece) for piece in pieces]
        if sum(sizes) < OUT_BY_REF_FROM_BYTES:
            return None
        start = arena.alloc(sum(-(-size // ALIGN) * ALIGN for size in sizes))
        if start is None:
            return None
        refs, at, view = [], start, arena.view
        for piece, size in zip(pieces, sizes):
            view[at : at + size] = piece
            refs.append((at, size))
            at += -(-size // ALIGN) * ALIGN
        return refs

    def send(self, call_id: int, kind: int, payload: bytes) -> None:
        if self.transport is not None:
            self._queue([lane.header(call_id, kind, len(payload)), payload])

    def _queue(self, parts: list[Any]) -> None:
        if not self.out:
            self.loop.call_soon(self.flush)
        self.out += parts

    def flush(self) -> None:
        if self.transport is not None and self.out:
            self.transport.writelines(self.out)
        self.out = []
