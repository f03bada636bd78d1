"""A serialized protobuf message's top-level fields, walked by their lengths without parsing it.

The gateway reads routing fields this way and the runtime finds large tensors; neither copies
the bytes it skips.
"""

from __future__ import annotations

from collections.abc import Iterator

Buffer = bytes | bytearray | memoryview
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
# NOTE: a bound on top-level fields. Each costs a Python loop turn (about 1 µs), and a 256 MiB
# message of 2-byte fields would hold the event loop for minutes; protobuf's parser would also
# turn each empty `outputs` entry into a message of ~45 bytes. A real request has a few fields
# per input and output, so this is far above any real one.
MAX_FIELDS = 1 << 16


class WireError(ValueError):
    """Bytes that are not a protobuf message; the text says what is wrong."""


def varint(buf: Buffer, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def fields(buf: Buffer) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of the field, start of its value, end) of each top-level
    field; a length-delimited value is ``buf[value start:end]``. A field of a wire type its
    declaration does not have is an unknown field to protobuf: callers check the type."""
    pos, end, count = 0, len(buf), 0
    while pos < end:
        count += 1
        if count > MAX_FIELDS:
            raise WireError(f"more than {MAX_FIELDS} fields")
        start = pos
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        value = pos
        if wire == LENGTH_DELIMITED:
            length, value = varint(buf, pos)
            pos = value + length
            if pos > end:
                raise WireError("field runs past the end")
        elif wire == VARINT:
            _, pos = varint(buf, pos)
        elif wire in (FIXED64, FIXED32):
            pos += 8 if wire == FIXED64 else 4
            if pos > end:
                raise WireError("fixed-size field runs past the end")
        else:
            raise WireError(f"unsupported wire type {wire}")
        yield number, wire, start, value, pos


def encode_varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` with ``payload`` as its value, ready to append to a message."""
    return encode_varint(number << 3 | LENGTH_DELIMITED) + encode_varint(len(payload)) + payload
