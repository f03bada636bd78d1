"""Set a field of a serialized ModelInferRequest without re-serialising it: append it once more.

Protobuf parsers keep the last occurrence of a scalar field and merge map entries, so appending
costs one copy of the request (of its head alone when its tensors are kept apart: Parts).
"""

from __future__ import annotations

from common.wire import LENGTH_DELIMITED
from gateway.request_parts import Request

MODEL_VERSION, ID, PARAMETERS = 2, 3, 4  # ModelInferRequest's field numbers
_PARAMETER_KEY, _PARAMETER_VALUE, _STRING_PARAM = 1, 2, 3  # map entry; InferParameter


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | LENGTH_DELIMITED) + _varint(len(payload)) + payload


def with_field(request: Request, number: int, value: str) -> Request:
    """`request` with string field `number` set to `value`."""
    return request + _field(number, value.encode())


def with_version(request: Request, version: str) -> Request:
    return with_field(request, MODEL_VERSION, version)


def with_id(request: Request, request_id: str) -> Request:
    return with_field(request, ID, request_id)


def with_parameter(request: Request, key: str, value: str) -> Request:
    """`request` with `parameters[key]` set to the string `value` (a map entry, appended)."""
    entry = _field(_PARAMETER_KEY, key.encode()) + _field(
        _PARAMETER_VALUE, _field(_STRING_PARAM, value.encode()))
    return request + _field(PARAMETERS, entry)
