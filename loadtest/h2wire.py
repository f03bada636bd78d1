"""A minimal HTTP/2 (prior knowledge, cleartext) client for unary gRPC calls with raw bytes, lean
enough that an open-loop sender on the same cores stays out of the way (``grpc.aio`` costs
several hundred µs of client CPU per call here).

It sends one fixed request (constant header block, literal HPACK, no dynamic table) on each new
stream and never decodes the answer's headers: an answer is good when its stream ends after
exactly ``answer_size`` bytes of DATA (the gRPC message a good answer carries); a gRPC error is a
trailers-only answer without DATA, a reset stream, or GOAWAY. The real-call checks around every
run verify grpc-status and the answer itself. Flow control: a 2 GiB receive window is granted up
front; sends respect the server's connection window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
MAX_WINDOW = 2**31 - 1

#: Called once per finished stream: (ok, when it was due (ns), what went wrong).
Done = Callable[[bool, int, str], None]


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags))
            + stream.to_bytes(4, "big") + payload)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer with an N-bit prefix (RFC 7541 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return _integer(len(raw), 7, 0) + raw


def header_block(authority: str, path: str) -> bytes:
    """POST ``path`` with gRPC's headers, literal fields never entering the dynamic table."""
    return (b"\x83\x86"  # :method POST, :scheme http (static table 3 and 6)
            + _integer(4, 4, 0) + _string(path)  # :path, name from static table 4
            + _integer(1, 4, 0) + _string(authority)  # :authority (1)
            + _integer(31, 4, 0) + _string("application/grpc")  # content-type (31)
            + b"\x00" + _string("te") + _string("trailers"))


class GrpcConnection(asyncio.Protocol):
    """One HTTP/2 connection sending the same unary call on as many streams as asked."""

    def __init__(self, authority: str, path: str, message: bytes, answer_size: int,
                 done: Done) -> None:
        self.headers = header_block(authority, path)
        self.data = b"\x00" + len(message).to_bytes(4, "big") + message
        self.answer_size = answer_size
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.next_stream = 1
        self.streams: dict[int, list[int]] = {}  # stream id -> [due ns, DATA bytes received]
        self.window = 65535  # the server's connection-level receive window for our DATA
        self.blocked: list[bytes] = []  # DATA frames waiting for that window
        self.closed = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        settings = (b"\x00\x02" + (0).to_bytes(4, "big")  # no server push
                    + b"\x00\x04" + MAX_WINDOW.to_bytes(4, "big"))  # stream receive window
        self.transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                        + frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - 65535).to_bytes(4, "big")))

    def send(self, due: int) -> None:
        """Open a stream with the call; ``due`` is when it was scheduled (ns)."""
        if self.closed or self.transport is None:
            self.done(False, due, self.closed or "not connected")
            return
        stream = self.next_stream
        self.next_stream += 2
        self.streams[stream] = [due, 0]
        out = frame(HEADERS, END_HEADERS, stream, self.headers)
        body = frame(DATA, END_STREAM, stream, self.data)
        if self.blocked or len(self.data) > self.window:
            self.blocked.append(body)
        else:
            self.window -= len(self.data)
            out += body
        self.transport.write(out)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        at = 0
        while len(buf) - at >= 9:
            length = int.from_bytes(buf[at:at + 3], "big")
            if len(buf) - at - 9 < length:
                break
            kind, flags = buf[at + 3], buf[at + 4]
            stream = int.from_bytes(buf[at + 5:at + 9], "big") & MAX_WINDOW
            self._frame(kind, flags, stream, bytes(buf[at + 9:at + 9 + length]))
            at += 9 + length
        del buf[:at]

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == DATA:
            size = len(payload) - (payload[0] + 1 if flags & PADDED else 0)
            if stream in self.streams:
                self.streams[stream][1] += size
            if flags & END_STREAM:
                self._finish(stream, "")
        elif kind == HEADERS and flags & END_STREAM:
            self._finish(stream, "")
        elif kind == RST_STREAM:
            self._finish(stream, f"stream reset, code {int.from_bytes(payload[:4], 'big')}")
        elif kind == SETTINGS and not flags & ACK:
            self._write(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self._write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE and stream == 0:
            self.window += int.from_bytes(payload[:4], "big") & MAX_WINDOW
            self._unblock()
        elif kind == GOAWAY:
            self._fail(f"GOAWAY, code {int.from_bytes(payload[4:8], 'big')}")

    def _finish(self, stream: int, error: str) -> None:
        entry = self.streams.pop(stream, None)
        if entry is None:
            return
        due, received = entry
        if not error and received != self.answer_size:
            error = (f"an answer of {received} bytes, not {self.answer_size} "
                     "(a gRPC error: grpc-status != 0)")
        self.done(not error, due, error)

    def _unblock(self) -> None:
        out = b""
        while self.blocked and len(self.data) <= self.window:
            self.window -= len(self.data)
            out += self.blocked.pop(0)
        self._write(out)

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, why: str) -> None:
        self.closed = why
        for stream in list(self.streams):
            self._finish(stream, why)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc!r}")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(address: str, path: str, message: bytes, answer_size: int,
                  done: Done) -> GrpcConnection:
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: GrpcConnection(address, path, message, answer_size, done), host, int(port))
    return conn
