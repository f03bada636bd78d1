"""Parse only what routing needs from a serialized ModelInferRequest: model, version, request id.

Skips every other field by its length, so tensor bytes are never touched or copied.
"""

from __future__ import annotations

from common.errors import invalid_argument

_WANTED = {1: "model_name", 2: "model_version", 3: "id"}
# NOTE: a bound on top-level fields. Each costs a Python loop turn here (about 1 µs), and a
# 256 MiB message of 2-byte fields would hold the event loop for minutes; the runtime's parser
# would also turn each empty `outputs` entry into a message of ~45 bytes. A real request has a
# few fields per input and output, so this is far above any real one.
MAX_FIELDS = 1 << 16


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise invalid_argument("malformed request: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise invalid_argument("malformed request: varint too long")


def model_and_version(buf: bytes) -> tuple[str, str]:
    """Fields 1 and 2 of the message; the last occurrence of a field wins, as in protobuf."""
    model, version, _ = routing_fields(buf)
    return model, version


def routing_fields(buf: bytes) -> tuple[str, str, str]:
    """Fields 1, 2 and 3 (model, version, request id); the last occurrence of each wins."""
    found = {1: b"", 2: b"", 3: b""}
    pos = 0
    end = len(buf)
    fields = 0
    while pos < end:
        fields += 1
        if fields > MAX_FIELDS:
            raise invalid_argument(f"malformed request: more than {MAX_FIELDS} fields")
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise invalid_argument("malformed request: field number 0")
        if wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise invalid_argument("malformed request: field runs past the end")
            if number in _WANTED:
                found[number] = buf[pos : pos + length]
            pos += length
        elif wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise invalid_argument(f"malformed request: unsupported wire type {wire}")
        if pos > end:
            raise invalid_argument("malformed request: fixed-size field runs past the end")
    try:
        return found[1].decode(), found[2].decode(), found[3].decode()
    except UnicodeDecodeError:
        raise invalid_argument("malformed request: a name or id is not UTF-8") from None
