"""Set a field of a serialized ModelInferRequest without re-serialising it: append it once more.

Protobuf parsers keep the last occurrence of a scalar field and merge map entries, so appending
costs one copy of the request (of its head alone when its tensors are kept apart: Parts).
"""

from __future__ import annotations

from common.wire import LENGTH_DELIMITED, length_delimited
from gateway.request_parts import Request

MODEL_VERSION, ID, PARAMETERS = 2, 3, 4  # ModelInferRequest's field numbers
_PARAMETER_KEY, _PARAMETER_VALUE, _STRING_PARAM = 1, 2, 3  # map entry; InferParameter


def with_field(request: Request, number: int, value: str) -> Request:
    """`request` with string field `number` set to `value`."""
    encoded = value.encode()
    if len(encoded) < 0x80 and number < 16:  # NOTE: an id or version: one-byte key, length
        return request + (bytes((number << 3 | LENGTH_DELIMITED, len(encoded))) + encoded)
    return request + length_delimited(number, encoded)


def with_version(request: Request, version: str) -> Request:
    return with_field(request, MODEL_VERSION, version)


def with_id(request: Request, request_id: str) -> Request:
    return with_field(request, ID, request_id)


def with_parameter(request: Request, key: str, value: str) -> Request:
    """`request` with `parameters[key]` set to the string `value` (a map entry, appended)."""
    entry = length_delimited(_PARAMETER_KEY, key.encode()) + length_delimited(
        _PARAMETER_VALUE, length_delimited(_STRING_PARAM, value.encode()))
    return request + length_delimited(PARAMETERS, entry)
