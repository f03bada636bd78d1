"""HTTP/1.1 answers read off a raw socket, in the order they come: for tests that pipeline."""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson

CEILING_S = 30.0  # NOTE: generous: waits are for a state, never a fixed time


class Answer:
    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":")
                                                             for line in lines[1:])}
        self.body = body

    def output(self) -> bytes:
        """The binary output after the JSON header."""
        return self.body[int(self.headers["inference-header-content-length"]):]

    def json(self) -> Any:
        return orjson.loads(self.body[:int(self.headers.get("inference-header-content-length",
                                                             len(self.body)))])


class Reader:
    """Answers read off one connection, in the order they come (bounded by CEILING_S)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)
        self.buffer += chunk
        return bool(chunk)

    def next(self) -> Answer:
        ends = time.monotonic() + CEILING_S
        while b"\r\n\r\n" not in self.buffer:
            assert time.monotonic() < ends and self._fill(), self.buffer
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        answer = Answer(head, b"")
        size = int(answer.headers.get("content-length", 0))
        while len(self.buffer) < size:
            assert time.monotonic() < ends and self._fill(), "closed mid-answer"
        answer.body, self.buffer = self.buffer[:size], self.buffer[size:]
        return answer

    def closed(self) -> bool:
        """True once the server closed the connection (having sent nothing more)."""
        ends = time.monotonic() + CEILING_S
        while time.monotonic() < ends:
            if not self._fill():
                return self.buffer == b""
        return False
