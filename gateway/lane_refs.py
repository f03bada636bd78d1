"""Tensors by reference on a unix lane: a request's raw inputs copied into this process's arena
and sent as (offset, length); an answer's raw outputs read from the runtime's arena and made
ordinary ModelInferResponse bytes again, so nothing above the lane client sees the difference.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from common import lane, lane_socket
from common.arena import ALIGN, Arena, Mapping
from common.errors import TensorgateError, unavailable
from common.wire import LENGTH_DELIMITED, encode_varint
from gateway.request_parts import Parts, Request, parts_of

#: Requests whose tensors total less go by value: copying a small one is cheaper than a slot.
BY_REF_FROM_BYTES = 16 * 1024
RAW_OUTPUT_TAG = bytes([6 << 3 | LENGTH_DELIMITED])  # ModelInferResponse.raw_output_contents
#: Seconds a caller refused for a full arena is asked to wait (Retry-After).
RETRY_AFTER_S = 1.0


def check_answer(frame: lane.Frame) -> dict[str, Any]:
    """The features of the runtime's answer to our hello; UNAVAILABLE naming both versions
    when it speaks another one or refused ours."""
    _, kind, _, payload = frame
    if kind == lane.ERROR:
        error = lane.parse_error(payload)
        if error.code == grpc.StatusCode.UNAVAILABLE:  # a runtime that checks hellos refused
            raise unavailable(error.message)
        # NOTE: a runtime before the hello answers it as an unknown call.
        raise unavailable(lane.mismatch(lane.VERSION, f"1 (it answered the hello: "
                                                      f"{error.message})"))
    if kind != lane.HELLO:
        raise unavailable(lane.mismatch(lane.VERSION, "unknown (it answered no hello)"))
    try:
        version, features = lane.parse_hello(payload)
    except ValueError as exc:
        raise unavailable(f"a runtime worker's lane hello is malformed: {exc}") from None
    if version != lane.VERSION:
        raise unavailable(lane.mismatch(lane.VERSION, version))
    return features


def answer_arena(frame: lane.Frame, fds: list[int]) -> Mapping | None:
    """The runtime's arena for answers, from its hello's answer on a unix lane; None when it
    took no arena (answers and requests then go by value)."""
    try:
        features = check_answer(frame)
        size = features.get("arena_bytes", 0)
        if "arena" not in features.get("accepts", ()) or not fds or not isinstance(size, int):
            return None
        try:
            return Mapping(fds.pop(), size)
        except ValueError as exc:
            raise unavailable(f"a runtime worker's arena is unusable: {exc}") from None
    finally:
        lane_socket.close_fds(fds)


def send_infer(connection: Any, arena: Arena, request: Request, timeout: float | None
               ) -> tuple[asyncio.Future, int | None]:
    """Send a ModelInfer with its raw inputs in ``arena``: tensors already there (an HTTP body
    written into it as it arrived) by their place, others copied into a slot. The call's future
    and that slot, which the caller frees when the call ends (None: no slot taken).
    RESOURCE_EXHAUSTED when the arena has no room."""
    parts = request if isinstance(request, Parts) else parts_of(request)
    if not isinstance(parts, Parts):  # NOTE: malformed: the runtime's decoder says how
        return send_by_value(connection, request, timeout), None
    rest, tensors = parts.head, parts.tensors
    placed = [arena.offset_of(tensor) for tensor in tensors]
    sizes = [0 if at is not None else -(-len(tensor) // ALIGN) * ALIGN
             for tensor, at in zip(tensors, placed)]
    if sum(sizes) < BY_REF_FROM_BYTES and not any(at is not None for at in placed):
        return send_by_value(connection, request, timeout), None
    slot = _slot(arena, sum(sizes))
    refs, at = [], slot or 0
    for tensor, size, start in zip(tensors, sizes, placed):
        if start is None:
            # NOTE: the one copy of a tensor in the gateway (grpc's bytes, a gzipped body)
            arena.view[at : at + len(tensor)] = tensor
            start, at = at, at + size
        refs.append((start, len(tensor)))
    table = lane.refs_table(refs)
    try:
        future = connection.send_parts(lane.INFER_REF, [table, rest], len(table) + len(rest),
                                       timeout)
    except BaseException:
        if slot is not None:
            arena.release(slot)
        raise
    return future, slot


def _slot(arena: Arena, size: int) -> int | None:
    """A slot of ``size`` bytes (None for none); RESOURCE_EXHAUSTED when the arena is full."""
    if not size:
        return None
    slot = arena.alloc(size)
    if slot is None:
        raise TensorgateError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the gateway's lane arena is full ({arena.slots.used >> 20} of "
            f"{arena.size >> 20} MiB hold requests in flight); retry later",
            retry_after=RETRY_AFTER_S)
    return slot


def send_by_value(connection: Any, request: Request, timeout: float | None) -> asyncio.Future:
    """Send a ModelInfer whole; a request in parts goes as its pieces, joined by the write."""
    kind = lane.METHOD_KIND["ModelInfer"]
    if isinstance(request, bytes):
        return connection.send(kind, request, timeout)
    return connection.send_parts(kind, request.pieces(), len(request), timeout)


def response_bytes(payload: lane.Buffer, arena: Mapping | None) -> tuple[bytes, int | None]:
    """A by-reference answer as ModelInferResponse bytes, and the runtime's slot to release.
    raw_output_contents is the message's last field, so appending it gives the very bytes
    the runtime would have sent by value."""
    if arena is None:
        raise ValueError("an answer by reference on a lane with no arena")
    refs, rest = lane.parse_refs(payload)
    parts: list[Any] = [rest]
    for start, length in refs:
        parts += [RAW_OUTPUT_TAG, encode_varint(length), arena.slice(start, length)]
    return b"".join(parts), refs[0][0] if refs else None
