"""Parse only what routing needs from a serialized ModelInferRequest: model, version, request id
and Triton's `timeout` parameter. Skips every other field by its length, so tensor bytes are never
touched or copied.
"""

from __future__ import annotations

from common.errors import invalid_argument
from common.wire import LENGTH_DELIMITED, MAX_FIELDS, VARINT, WireError, fields, varint

_WANTED = (1, 2, 3)
_PARAMETERS = 4  # map<string, InferParameter>: one entry per occurrence
_TIMEOUT = b"timeout"
BAD_TIMEOUT = "parameter 'timeout': expected a positive whole number of microseconds"


def model_and_version(buf: bytes) -> tuple[str, str]:
    """Fields 1 and 2 of the message; the last occurrence of a field wins, as in protobuf."""
    model, version, _ = routing_fields(buf)
    return model, version


def routing_fields(buf: bytes) -> tuple[str, str, str]:
    """Fields 1, 2 and 3 (model, version, request id); the last occurrence of each wins."""
    model, version, request_id, _ = infer_fields(buf)
    return model, version, request_id


def infer_fields(buf: bytes) -> tuple[str, str, str, float | None]:
    """Model, version, request id and the `timeout` parameter in seconds (None: not given)."""
    found = _walk(buf)
    if found is None:  # NOTE: something unusual: the general walk says what, or reads it
        return _infer_fields(buf)
    model, version, request_id, parameters = found
    timeout: float | None = None
    for start, end in parameters:
        if buf.find(_TIMEOUT, start, end) >= 0:
            timeout = _timeout_entry(buf[start:end], timeout)
    try:
        return model.decode(), version.decode(), request_id.decode(), timeout
    except UnicodeDecodeError:
        raise invalid_argument("malformed request: a name or id is not UTF-8") from None


def _walk(buf: bytes) -> tuple[bytes, bytes, bytes, list[tuple[int, int]]] | None:
    """The hot path's walk: every field of a ModelInferRequest is length-delimited with a
    one-byte key. None for anything else (another wire type, a long key, a malformed or
    endless message): `_infer_fields` then walks it as protobuf would, or says what is wrong."""
    found = [b"", b"", b"", b""]
    parameters: list[tuple[int, int]] = []
    pos, end, count = 0, len(buf), 0
    while pos < end:
        key = buf[pos]
        count += 1
        if key & 7 != LENGTH_DELIMITED or key >= 0x80 or count > MAX_FIELDS:
            return None
        length = buf[pos + 1] if pos + 1 < end else 0x80
        pos += 2
        shift = 7
        if length >= 0x80:
            length &= 0x7F
            while True:  # NOTE: at most 10 turns: a longer varint is refused
                if pos >= end or shift > 63:
                    return None
                byte = buf[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
        start, pos = pos, pos + length
        if pos > end:
            return None
        number = key >> 3
        if number <= 3:
            if number == 0:
                return None
            found[number - 1] = buf[start:pos]
        elif number == _PARAMETERS:
            parameters.append((start, pos))
    return found[0], found[1], found[2], parameters


def _infer_fields(buf: bytes) -> tuple[str, str, str, float | None]:
    """`infer_fields` over any message: protobuf's rules for every wire type and key."""
    found = {1: b"", 2: b"", 3: b""}
    timeout: float | None = None
    try:
        for number, wire, _, value, end in fields(buf):
            if wire != LENGTH_DELIMITED:
                continue
            if number in _WANTED:
                found[number] = buf[value:end]
            elif number == _PARAMETERS and buf[value:end].find(_TIMEOUT) >= 0:
                timeout = _timeout_entry(buf[value:end], timeout)
    except WireError as exc:
        raise invalid_argument(f"malformed request: {exc}") from None
    try:
        return found[1].decode(), found[2].decode(), found[3].decode(), timeout
    except UnicodeDecodeError:
        raise invalid_argument("malformed request: a name or id is not UTF-8") from None


def _timeout_entry(entry: bytes, before: float | None) -> float | None:
    """A parameters map entry: its value in seconds if its key is `timeout`, else `before`."""
    key, value = b"", b""
    for number, wire, _, start, end in fields(entry):
        if number == 1 and wire == LENGTH_DELIMITED:
            key = entry[start:end]
        elif number == 2 and wire == LENGTH_DELIMITED:
            value = entry[start:end]
    if key != _TIMEOUT:
        return before
    micros = 0
    # InferParameter: int64_param = 2, uint64_param = 5 (varints); any other kind is refused.
    for number, wire, _, start, _end in fields(value):
        if number in (2, 5) and wire == VARINT:
            micros = varint(value, start)[0]
        else:
            raise invalid_argument(BAD_TIMEOUT)
    if micros <= 0 or micros >= 1 << 63:  # a negative int64 arrives as a huge varint
        raise invalid_argument(BAD_TIMEOUT)
    return micros / 1e6
