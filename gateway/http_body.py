"""An HTTP request body, read only when a handler asks (after auth): within the size limit, and
inflated as it streams with the same limit counted before each piece is allocated."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from common.errors import TensorgateError, invalid_argument
from common.names import is_whole, shown

#: The zlib window of each accepted Content-Encoding (None: taken as it comes).
ENCODINGS: dict[str, int | None] = {"identity": None, "gzip": 31, "deflate": 15}


class Body:
    """The body of one request; `read()` at most once. `limit` bounds the bytes received and,
    for a compressed body, the bytes it inflates to."""

    def __init__(self, receive: Callable[[], Awaitable[Mapping[str, Any]]] | None,
                 headers: Mapping[str, str], limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.declared = headers.get("content-length")
        self.encoding = headers.get("content-encoding", "identity").strip().lower() or "identity"

    def check(self) -> None:
        """Refuse on the headers alone what the body could never pass."""
        if self.encoding not in ENCODINGS:
            raise invalid_argument(f"Content-Encoding {shown(self.encoding)} is not supported: "
                                   "send identity, gzip or deflate")
        declared = self.declared
        if declared is not None and is_whole(declared) and int(declared) > self.limit:
            raise invalid_argument(f"request body of {int(declared)} bytes exceeds the limit of "
                                   f"{self.limit}")

    async def read(self) -> bytes:
        """The whole body, inflated if it came compressed."""
        self.check()
        assert self._receive is not None  # NOTE: a Body made for whole() has no stream
        window = ENCODINGS[self.encoding]
        inflater = None if window is None else zlib.decompressobj(window)
        parts: list[bytes] = []
        received = plain = 0
        more = True
        while more:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise TensorgateError(grpc.StatusCode.CANCELLED,
                                      "the client went away before its request body arrived")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            received += len(chunk)
            if received > self.limit:
                raise invalid_argument(f"request body exceeds the limit of {self.limit} bytes")
            if inflater is None:
                parts.append(chunk)
            else:
                plain = self._inflate(inflater, chunk, parts, plain, final=not more)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def whole(self, data: bytes) -> bytes:
        """A body received whole (HTTP infer's fast path counted it against the limit as it
        came), inflated if it came compressed."""
        window = ENCODINGS[self.encoding]
        if window is None:
            return data
        parts: list[bytes] = []
        self._inflate(zlib.decompressobj(window), data, parts, 0, final=True)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _inflate(self, inflater: Any, chunk: bytes, parts: list[bytes], plain: int,
                 final: bool) -> int:
        """Inflate `chunk` onto `parts`, never past the limit; the bytes inflated so far."""
        try:
            while chunk:
                # NOTE: max_length caps each piece before it is allocated; +1 tells "exactly the
                # limit" from "over it".
                piece = inflater.decompress(chunk, self.limit - plain + 1)
                plain = self._add(piece, parts, plain)
                chunk = inflater.unconsumed_tail
            if final:
                plain = self._add(inflater.flush(self.limit - plain + 1), parts, plain)
                if not inflater.eof:
                    raise zlib.error("the compressed stream is truncated")
        except zlib.error as exc:
            raise invalid_argument(f"body is not valid {self.encoding}: {exc}") from None
        return plain

    def _add(self, piece: bytes, parts: list[bytes], plain: int) -> int:
        plain += len(piece)
        if plain > self.limit:
            parts.clear()  # NOTE: release what was inflated now, not when the error is gone
            raise invalid_argument(f"decompressed body exceeds the limit of {self.limit} bytes")
        if piece:
            parts.append(piece)
        return plain
