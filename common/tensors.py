"""Pure tensor codecs: JSON data and typed contents to the raw little-endian layout, and back."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from common.datatypes import ELEMENT_SIZE, NUMPY_DTYPES
from common.errors import invalid_argument

# Which InferTensorContents field carries each datatype (FP16 and BF16 travel raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

MAX_ELEMENTS = 1 << 40
_LEN = struct.Struct("<I")


def element_count(shape: Sequence[int], what: str) -> int:
    """The number of elements in a shape; refuses negative dims and absurd products."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise invalid_argument(f"{what}: shape {list(shape)} has a negative dimension")
        count *= dim
        if count > MAX_ELEMENTS:
            raise invalid_argument(f"{what}: shape {list(shape)} has too many elements")
    return count


def serialize_bytes(items: Iterable[bytes]) -> bytes:
    """BYTES elements in the wire layout: each a 4-byte little-endian length, then its bytes."""
    return b"".join(_LEN.pack(len(item)) + item for item in items)


def deserialize_bytes(raw: bytes | memoryview, what: str) -> list[bytes]:
    """Split a raw BYTES tensor into its elements, refusing lengths that run past the end."""
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise invalid_argument(f"{what}: truncated BYTES element length at byte {offset}")
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise invalid_argument(
                f"{what}: BYTES element of {length} bytes runs past the end of the tensor"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    for row in data:
        flat.extend(_flatten(row))
    return flat


def _to_bytes_item(item: Any, what: str) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, bytes):
        return item
    raise invalid_argument(f"{what}: BYTES elements must be strings, got {type(item).__name__}")


def json_to_raw(datatype: str, shape: Sequence[int], data: Any, what: str) -> bytes:
    """JSON `data` (nested or flat, row-major) to the raw layout, checked against the shape."""
    count = element_count(shape, what)
    flat = _flatten(data)
    if len(flat) != count:
        raise invalid_argument(
            f"{what}: shape {list(shape)} needs {count} elements, data has {len(flat)}"
        )
    if datatype == "BYTES":
        return serialize_bytes(_to_bytes_item(item, what) for item in flat)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"{what}: datatype {datatype} cannot be sent as JSON data")
    try:
        return np.asarray(flat, dtype=dtype).tobytes()
    except (TypeError, ValueError, OverflowError) as exc:
        raise invalid_argument(f"{what}: data is not valid {datatype}: {exc}") from None


def raw_to_json(datatype: str, shape: Sequence[int], raw: bytes | memoryview, what: str) -> list:
    """A raw tensor to flat JSON-ready values (BYTES as UTF-8 strings where they decode)."""
    if datatype == "BYTES":
        items = deserialize_bytes(raw, what)
        return [_decode_text(item) for item in items]
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"{what}: datatype {datatype} cannot be returned as JSON data")
    array = np.frombuffer(raw, dtype=dtype)
    if datatype == "FP16":
        array = array.astype(np.float32)
    return array.tolist()


def _decode_text(item: bytes) -> str:
    try:
        return item.decode()
    except UnicodeDecodeError:
        return item.decode("latin-1")


def contents_to_raw(datatype: str, contents: Any, what: str) -> bytes:
    """Typed gRPC InferTensorContents to the raw layout."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise invalid_argument(
            f"{what}: datatype {datatype} must be sent in raw_input_contents, not contents"
        )
    values = getattr(contents, field)
    if datatype == "BYTES":
        return serialize_bytes(values)
    return np.asarray(values, dtype=NUMPY_DTYPES[datatype]).tobytes()


def expected_byte_size(datatype: str, count: int) -> int | None:
    """Bytes a fixed-size tensor of `count` elements takes; None for BYTES (variable)."""
    size = ELEMENT_SIZE.get(datatype)
    return None if size is None else size * count
