"""The lane's hello on a raw unix socket, before asyncio wraps it: frames with file descriptors.

asyncio's transports cannot pass descriptors (SCM_RIGHTS), so both ends exchange the hello,
and with it their arenas' memfds, on the bare socket first.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence

from common import lane

#: Descriptors one hello may carry (an arena's memfd); more are closed and refused.
MAX_FDS = 1


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


async def recv_frame(sock: socket.socket, max_payload: int = lane.MAX_HELLO_BYTES
                     ) -> tuple[lane.Frame, list[int]]:
    """One whole frame off a non-blocking socket, and the descriptors sent with it (the
    caller owns them). The caller bounds the wait; ValueError for a frame past
    ``max_payload``, ConnectionError when the peer closes first."""
    data, fds = bytearray(), []
    need, size = lane.HEADER.size, -1
    try:
        while len(data) < need:
            try:
                chunk, ancillary, _, _ = sock.recvmsg(need - len(data),
                                                     socket.CMSG_SPACE(4 * MAX_FDS))
            except BlockingIOError:
                await _readable(sock)
                continue
            fds += _fds(ancillary)
            if not chunk:
                raise ConnectionError("the peer closed the lane during its hello")
            data += chunk
            if size < 0 and len(data) >= lane.HEADER.size:
                size = lane.HEADER.unpack_from(data)[0]
                if size > max_payload:
                    raise ValueError(f"a lane hello of {size} bytes exceeds the limit of "
                                     f"{max_payload}")
                need += size
        if len(fds) > MAX_FDS:
            raise ValueError(f"a lane hello carried {len(fds)} descriptors, at most {MAX_FDS}")
    except BaseException:
        close_fds(fds)
        raise
    _, call_id, kind, timeout = lane.HEADER.unpack_from(data)
    return (call_id, kind, timeout, bytes(data[lane.HEADER.size:])), fds


async def send_frame(sock: socket.socket, frame: bytes, fds: Sequence[int] = ()) -> None:
    """Write a whole frame, with ``fds`` beside its first byte."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    try:
        sent = sock.sendmsg([frame], ancillary if fds else [])
    except BlockingIOError:
        sent = 0
        if fds:  # NOTE: never on a fresh socket: its buffer is empty and a hello is small
            raise ConnectionError("the lane socket's buffer is full before its hello") from None
    if sent < len(frame):
        await asyncio.get_running_loop().sock_sendall(sock, frame[sent:])


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
