"""Parse only what routing needs from a serialized ModelInferRequest: model, version, request id.

Skips every other field by its length, so tensor bytes are never touched or copied.
"""

from __future__ import annotations

from common.errors import invalid_argument
from common.wire import LENGTH_DELIMITED, WireError, fields

_WANTED = (1, 2, 3)


def model_and_version(buf: bytes) -> tuple[str, str]:
    """Fields 1 and 2 of the message; the last occurrence of a field wins, as in protobuf."""
    model, version, _ = routing_fields(buf)
    return model, version


def routing_fields(buf: bytes) -> tuple[str, str, str]:
    """Fields 1, 2 and 3 (model, version, request id); the last occurrence of each wins."""
    found = {1: b"", 2: b"", 3: b""}
    try:
        for number, wire, _, value, end in fields(buf):
            if number in _WANTED and wire == LENGTH_DELIMITED:
                found[number] = buf[value:end]
    except WireError as exc:
        raise invalid_argument(f"malformed request: {exc}") from None
    try:
        return found[1].decode(), found[2].decode(), found[3].decode()
    except UnicodeDecodeError:
        raise invalid_argument("malformed request: a name or id is not UTF-8") from None
