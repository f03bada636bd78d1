"""Pure tensor codecs: JSON data and typed contents to the raw little-endian layout, and back."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
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
_INTEGERS = frozenset(("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"))
# NOTE: JSON elements are checked by type, not coerced: numpy would turn null into NaN, "1.5"
# into 1.5, "false" into True and 1.7 into 1 for an integer tensor, all silently.
_JSON_TYPES: dict[str, tuple[frozenset[type], str]] = {
    "BOOL": (frozenset({bool}), "booleans"),
    "FP16": (frozenset({int, float}), "numbers"),
    "FP32": (frozenset({int, float}), "numbers"),
    "FP64": (frozenset({int, float}), "numbers"),
    "BYTES": (frozenset({str}), "strings"),
} | {name: (frozenset({int}), "integers") for name in _INTEGERS}


def element_count(shape: Sequence[int], what: str) -> int:
    """The number of elements in a shape; refuses negative dims and absurd products."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise invalid_argument(f"{what}: shape {list(shape)} has a negative dimension")
        # NOTE: each dim on its own too: after a 0 the product stays 0 whatever follows, and a
        # dim past int64 cannot be stored in the protobuf message at all.
        if dim > MAX_ELEMENTS:
            raise invalid_argument(f"{what}: shape {list(shape)} has a dimension over "
                                   f"{MAX_ELEMENTS}")
        count *= dim
        if count > MAX_ELEMENTS:
            raise invalid_argument(f"{what}: shape {list(shape)} has too many elements")
    return count


def serialize_bytes(items: Iterable[bytes]) -> bytes:
    """BYTES elements in the wire layout: each a 4-byte little-endian length, then its bytes."""
    return b"".join(_LEN.pack(len(item)) + item for item in items)


def _spans(view: memoryview, what: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each element of a raw BYTES tensor, refusing lengths that run past it."""
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
        yield offset, offset + length
        offset += length


def deserialize_bytes(raw: bytes | bytearray | memoryview, what: str) -> list[bytes]:
    """Split a raw BYTES tensor into its elements, refusing lengths that run past the end."""
    view = memoryview(raw)
    return [bytes(view[start:end]) for start, end in _spans(view, what)]


def count_bytes_elements(raw: bytes | bytearray | memoryview, what: str) -> int:
    """How many elements a raw BYTES tensor holds, checked like `deserialize_bytes`, no copies.
    The loop is written out (not `_spans`): it runs per request, and a generator costs ~40 %."""
    view = memoryview(raw)
    count = offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise invalid_argument(f"{what}: truncated BYTES element length at byte {offset}")
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4 + length
        if offset > len(view):
            raise invalid_argument(
                f"{what}: BYTES element of {length} bytes runs past the end of the tensor"
            )
        count += 1
    return count


def count_text_elements(raw: bytes | bytearray | memoryview, what: str) -> int:
    """Like `count_bytes_elements`, and each element must be UTF-8 text: ONNX Runtime and
    TorchScript take strings as Python `str`, which arbitrary bytes cannot round-trip."""
    view = memoryview(raw)
    count = 0
    for start, end in _spans(view, what):
        _check_text(view[start:end], count, what, _MODEL_TEXT)
        count += 1
    return count


_MODEL_TEXT = "this model takes strings, which must be valid UTF-8"
_JSON_TEXT = ('JSON strings carry text only: ask for this output as binary data '
              '("parameters": {"binary_data": true})')


def _check_text(item: memoryview | bytes, index: int, what: str, why: str) -> None:
    try:
        str(item, "utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_argument(
            f"{what}: BYTES element {index} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
            f"at offset {exc.start}); {why}") from None


def text_elements(raw: bytes | bytearray | memoryview, what: str, why: str = _MODEL_TEXT
                  ) -> list[str]:
    """A raw BYTES tensor's elements as text; INVALID_ARGUMENT naming one that is not UTF-8."""
    items = deserialize_bytes(raw, what)
    try:
        return [item.decode() for item in items]
    except UnicodeDecodeError:
        for index, item in enumerate(items):
            _check_text(item, index, what, why)
        raise


def encode_text(value: Any) -> bytes:
    """One string element a backend returned, as the bytes that go on the wire."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # NOTE: strict: a lone surrogate has no UTF-8 form, and guessing one would corrupt it.
        return value.encode()
    raise TypeError(f"a string output element must be str or bytes, got {type(value).__name__}")


def _flatten(data: Any, rank: int) -> list[Any]:
    """Row-major elements of nested lists, one level per dimension at most.

    Iterative and bounded by the shape's rank, so deeply nested JSON cannot exhaust the stack;
    lists left below the last level are caught by the element type check.
    """
    if not isinstance(data, list):
        return [data]
    flat = data
    # NOTE: `data` itself is the first level: rank - 1 more may be opened.
    for _ in range(rank - 1):
        if not flat or not isinstance(flat[0], list):
            break
        flat = [x for row in flat for x in (row if isinstance(row, list) else (row,))]
    return flat


def _check_types(datatype: str, flat: list[Any], what: str) -> None:
    allowed, words = _JSON_TYPES[datatype]
    wrong = set(map(type, flat)) - allowed
    if wrong:
        names = sorted("null" if t is type(None) else t.__name__ for t in wrong)
        raise invalid_argument(f"{what}: {datatype} data must be {words}, got {', '.join(names)}")


def json_to_raw(datatype: str, shape: Sequence[int], data: Any, what: str) -> bytes:
    """JSON `data` (nested or flat, row-major) to the raw layout, checked against the shape."""
    count = element_count(shape, what)
    if datatype not in _JSON_TYPES:
        raise invalid_argument(f"{what}: datatype {datatype} cannot be sent as JSON data")
    flat = _flatten(data, len(shape))
    if flat and isinstance(flat[0], list):
        raise invalid_argument(f"{what}: data is nested deeper than shape {list(shape)}: at most "
                               f"one level of lists per dimension")
    if len(flat) != count:
        raise invalid_argument(
            f"{what}: shape {list(shape)} needs {count} elements, data has {len(flat)}"
        )
    _check_types(datatype, flat, what)
    try:
        if datatype == "BYTES":
            return serialize_bytes(item.encode() for item in flat)
        with np.errstate(over="raise", invalid="raise"):
            return np.asarray(flat, dtype=NUMPY_DTYPES[datatype]).tobytes()
    except (TypeError, ValueError, OverflowError, FloatingPointError) as exc:
        raise invalid_argument(f"{what}: data is not valid {datatype}: {exc}") from None


def raw_to_json(datatype: str, shape: Sequence[int], raw: bytes | memoryview, what: str) -> list:
    """A raw tensor to flat JSON-ready values; BYTES must be UTF-8 text, which JSON can carry."""
    if datatype == "BYTES":
        # NOTE: decoding other bytes (as latin-1, say) would hand the caller text that is not
        # what the model answered; the binary extension carries them exactly.
        return text_elements(raw, what, _JSON_TEXT)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"{what}: datatype {datatype} cannot be returned as JSON data")
    array = np.frombuffer(raw, dtype=dtype)
    if datatype == "FP16":
        array = array.astype(np.float32)
    return array.tolist()


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
    dtype = NUMPY_DTYPES[datatype]
    wide = np.asarray(values)
    # NOTE: INT8/INT16 travel in int32 fields (UINT8/UINT16 in uint32): a cast would wrap
    # 1000 to -24 silently, so values outside the narrow type are refused instead.
    if datatype in _INTEGERS and wide.size:
        info = np.iinfo(dtype)
        if int(wide.min()) < info.min or int(wide.max()) > info.max:
            raise invalid_argument(f"{what}: {field} holds values outside {datatype}'s range "
                                   f"{info.min}..{info.max}")
    return wide.astype(dtype).tobytes()


def expected_byte_size(datatype: str, count: int) -> int | None:
    """Bytes a fixed-size tensor of `count` elements takes; None for BYTES (variable)."""
    size = ELEMENT_SIZE.get(datatype)
    return None if size is None else size * count
