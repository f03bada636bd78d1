"""The HTTP body reader: the size limit on what arrives and on what it inflates to."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from common.errors import TensorgateError
from gateway.http_body import Body

LIMIT = 64 * 1024


def receiver(chunks: list[bytes]) -> Any:
    """An ASGI receive() that hands out `chunks`, then nothing more."""
    pending: Iterator[bytes] = iter(chunks)
    left = len(chunks)

    async def receive() -> dict[str, Any]:
        nonlocal left
        left -= 1
        return {"type": "http.request", "body": next(pending, b""), "more_body": left > 0}

    return receive


def read(chunks: list[bytes], **headers: str) -> bytes:
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    return asyncio.run(Body(receiver(chunks), named, LIMIT).read())


def refusal(chunks: list[bytes], **headers: str) -> str:
    with pytest.raises(TensorgateError) as caught:
        read(chunks, **headers)
    assert caught.value.http_status == 400
    return caught.value.message


def split(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def test_a_body_in_pieces_is_joined() -> None:
    assert read([b"ab", b"", b"cd"]) == b"abcd"


def test_gzip_and_deflate_inflate_as_they_stream() -> None:
    text = bytes(range(256)) * 200  # 51,200 bytes: under the limit
    assert read(split(gzip.compress(text)), content_encoding="gzip") == text
    assert read(split(zlib.compress(text)), content_encoding="Deflate") == text


def test_a_body_of_exactly_the_limit_inflates() -> None:
    assert len(read([gzip.compress(b"\0" * LIMIT)], content_encoding="gzip")) == LIMIT


def test_a_bomb_is_refused_one_byte_past_the_limit() -> None:
    message = refusal(split(gzip.compress(b"\0" * (LIMIT + 1))), content_encoding="gzip")
    assert message == f"decompressed body exceeds the limit of {LIMIT} bytes"


def test_a_truncated_stream_is_refused() -> None:
    whole = gzip.compress(b"x" * 1000)
    assert "truncated" in refusal([whole[:-8]], content_encoding="gzip")


def test_an_unknown_encoding_is_refused_by_name() -> None:
    assert "Content-Encoding 'br' is not supported" in refusal([b"x"], content_encoding="br")


def test_a_declared_length_past_the_limit_is_refused_before_reading() -> None:
    async def never() -> dict[str, Any]:
        raise AssertionError("the body was read")

    body = Body(never, {"content-length": str(LIMIT + 1)}, LIMIT)
    with pytest.raises(TensorgateError) as caught:
        asyncio.run(body.read())
    assert f"request body of {LIMIT + 1} bytes exceeds the limit" in caught.value.message


def test_a_client_gone_mid_body_is_not_a_short_body() -> None:
    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    with pytest.raises(TensorgateError) as caught:
        asyncio.run(Body(gone, {}, LIMIT).read())
    assert caught.value.code.name == "CANCELLED"
