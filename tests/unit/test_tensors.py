"""Tensor codecs: JSON data and typed contents to raw bytes and back, for every OIP datatype."""

from __future__ import annotations

import numpy as np
import pytest

from common.datatypes import NUMPY_DTYPES
from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from common.tensors import (
    contents_to_raw,
    count_text_elements,
    deserialize_bytes,
    element_count,
    json_to_raw,
    raw_to_json,
    serialize_bytes,
    text_elements,
)

SAMPLES = {
    "BOOL": [[True, False], [False, True]],
    "UINT8": [[0, 255], [7, 8]],
    "UINT16": [[0, 65535], [1, 2]],
    "UINT32": [[0, 2**32 - 1], [3, 4]],
    "UINT64": [[0, 2**64 - 1], [5, 6]],
    "INT8": [[-128, 127], [0, 1]],
    "INT16": [[-32768, 32767], [0, 1]],
    "INT32": [[-(2**31), 2**31 - 1], [0, 1]],
    "INT64": [[-(2**63), 2**63 - 1], [0, 1]],
    "FP16": [[0.5, -1.25], [65504.0, 0.0]],
    "FP32": [[0.5, -1.25], [3.0e38, 0.0]],
    "FP64": [[0.1, -1.25], [1e300, 0.0]],
    "BYTES": [["a", ""], ["héllo", "xyz"]],
}


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_json_round_trips_through_raw(datatype: str) -> None:
    data = SAMPLES[datatype]
    raw = json_to_raw(datatype, [2, 2], data, "input 'x'")
    if datatype != "BYTES":
        expected = np.asarray(data, dtype=NUMPY_DTYPES[datatype]).tobytes()
        assert raw == expected
    back = raw_to_json(datatype, [2, 2], raw, "output 'x'")
    flat = [v for row in data for v in row]
    assert back == pytest.approx(flat) if datatype.startswith("FP") else back == flat


def test_flat_and_nested_data_give_the_same_bytes() -> None:
    nested = json_to_raw("FP32", [2, 3], [[1, 2, 3], [4, 5, 6]], "x")
    flat = json_to_raw("FP32", [2, 3], [1, 2, 3, 4, 5, 6], "x")
    assert nested == flat


def test_raw_layout_is_little_endian() -> None:
    assert json_to_raw("INT32", [1], [1], "x") == b"\x01\x00\x00\x00"
    assert json_to_raw("BYTES", [1], ["ab"], "x") == b"\x02\x00\x00\x00ab"


def test_wrong_element_count_names_the_input_and_shape() -> None:
    with pytest.raises(TensorgateError, match=r"input 'x'.*\[2, 2\] needs 4 elements, data has 3"):
        json_to_raw("FP32", [2, 2], [1, 2, 3], "input 'x'")


def test_values_out_of_range_are_refused() -> None:
    with pytest.raises(TensorgateError, match="not valid UINT8"):
        json_to_raw("UINT8", [1], [300], "input 'x'")


def test_bf16_cannot_travel_as_json() -> None:
    with pytest.raises(TensorgateError, match="BF16 cannot be sent as JSON"):
        json_to_raw("BF16", [1], [1.0], "input 'x'")


def test_negative_and_overflowing_shapes_are_refused() -> None:
    with pytest.raises(TensorgateError, match="negative"):
        element_count([2, -1], "input 'x'")
    with pytest.raises(TensorgateError, match="too many elements"):
        element_count([2**32, 2**32], "input 'x'")


def test_bytes_with_lying_lengths_are_refused() -> None:
    good = serialize_bytes([b"abc", b"de"])
    assert deserialize_bytes(good, "x") == [b"abc", b"de"]
    with pytest.raises(TensorgateError, match="runs past the end"):
        deserialize_bytes(b"\x09\x00\x00\x00abc", "x")
    with pytest.raises(TensorgateError, match="truncated"):
        deserialize_bytes(b"\x01\x00", "x")


def test_probe_08_json_answers_refuse_bytes_that_are_not_text() -> None:
    """Decoding them as latin-1 handed the caller text the model never answered."""
    raw = serialize_bytes([b"ok", "h\u00e9".encode(), b"\xff\xfe"])
    with pytest.raises(TensorgateError) as caught:
        raw_to_json("BYTES", [3], raw, "output 'y'")
    message = caught.value.message
    assert "output 'y': BYTES element 2 is not UTF-8 text (byte 0xff at offset 0)" in message
    assert "binary_data" in message
    assert raw_to_json("BYTES", [2], serialize_bytes([b"ok", "h\u00e9".encode()]), "y") == [
        "ok", "h\u00e9"]


def test_probe_08_string_inputs_must_be_text_and_name_the_element() -> None:
    good = serialize_bytes([b"a\x00b", "\u2603".encode(), b""])
    assert count_text_elements(good, "x") == 3
    assert text_elements(good, "x") == ["a\x00b", "\u2603", ""]
    bad = serialize_bytes([b"fine", b"caf\xe9"])
    for check in (count_text_elements, text_elements):
        with pytest.raises(TensorgateError, match=r"input 'x': BYTES element 1 is not UTF-8 "
                                                  r"text \(byte 0xe9 at offset 3\)"):
            check(bad, "input 'x'")
    with pytest.raises(TensorgateError, match="runs past the end"):
        count_text_elements(b"\x09\x00\x00\x00abc", "x")


@pytest.mark.parametrize("datatype", [d for d in SAMPLES if d != "FP16"])
def test_typed_contents_become_the_same_raw_bytes(datatype: str) -> None:
    flat = [v for row in SAMPLES[datatype] for v in row]
    contents = pb.InferTensorContents()
    field = getattr(contents, {
        "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
        "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
        "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
        "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}[datatype])
    field.extend([v.encode() for v in flat] if datatype == "BYTES" else flat)
    raw = contents_to_raw(datatype, contents, "x")
    assert raw == json_to_raw(datatype, [4], flat, "x")


def test_fp16_must_travel_raw_in_grpc() -> None:
    with pytest.raises(TensorgateError, match="raw_input_contents"):
        contents_to_raw("FP16", pb.InferTensorContents(), "x")
