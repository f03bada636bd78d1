"""Fuzz the HTTP infer body decoder: every input decodes or raises INVALID_ARGUMENT."""

from __future__ import annotations

import json
import re

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from gateway.http_codec import decode_infer_request
from tests.fuzz.strategies import FUZZ, infer_headers

MiB = 1 << 20


def decode(body: bytes, json_length: int | None = None) -> pb.ModelInferRequest | None:
    """Decode, allowing only the project's clean error; the result must serialize."""
    try:
        request, _ = decode_infer_request(body, json_length, "m", "")
    except TensorgateError as exc:
        assert exc.http_status == 400, exc
        assert exc.message
        return None
    request.SerializeToString()
    return request


@FUZZ
@given(header=infer_headers(), tail=st.binary(max_size=80))
def test_json_headers_with_binary_tails(header: dict, tail: bytes) -> None:
    # NOTE: the stdlib writes integers of any size, which a hostile caller can send too.
    text = json.dumps(header).encode()
    decoded = decode(text + tail, len(text))
    if decoded is not None:
        assert sum(len(r) for r in decoded.raw_input_contents) <= len(text) * 8 + len(tail)


@FUZZ
@given(body=st.binary(max_size=200), json_length=st.one_of(st.none(), st.integers(-5, 250)))
@example(body=b"{}", json_length=-1)
def test_arbitrary_bytes(body: bytes, json_length: int | None) -> None:
    decode(body, json_length)


def one_input(**entry: object) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], **entry}]})


@pytest.mark.parametrize(("body", "message"), [
    (one_input(shape=[1 << 31, 1 << 31], data=[1]), "too many elements"),
    (one_input(shape=[0, 2**64 - 1], parameters={"binary_data_size": 0}), "dimension over"),
    (one_input(shape=[2**63], parameters={"binary_data_size": 0}), "dimension over"),
    (one_input(shape=[-1], parameters={"binary_data_size": 0}), "negative dimension"),
    (one_input(shape=[2, -2], data=[1]), "negative dimension"),
    (one_input(datatype="FLOAT32", data=[1]), "unknown datatype 'FLOAT32'"),
    (one_input(data=[None]), "FP32 data must be numbers, got null"),
    (one_input(data=["1.5"]), "FP32 data must be numbers, got str"),
    (one_input(datatype="BOOL", data=["false"]), "BOOL data must be booleans"),
    (one_input(datatype="INT32", data=[1.7]), "INT32 data must be integers, got float"),
    (one_input(datatype="INT32", data=[True]), "INT32 data must be integers, got bool"),
    (one_input(datatype="FP16", data=[1e10]), "not valid FP16"),
    (one_input(data=[1e300]), "not valid FP32"),
    (one_input(datatype="UINT64", data=[-1]), "not valid UINT64"),
    (one_input(datatype="BYTES", data=[1]), "BYTES data must be strings"),
    (one_input(shape=[2], data=[1, [2]]), "FP32 data must be numbers, got list"),
    (one_input(parameters={"binary_data_size": 8}), "runs past the end"),
    (one_input(parameters={"binary_data_size": -1}), "runs past the end"),
    (b'{"inputs":[], "parameters": {"p": [1]}}', "within 64 bits"),
    (b'{"inputs":[], "id": {"a": 1}}', "'id' must be a string"),
    (b'{"inputs":[], "outputs": {"name": "y"}}', "'outputs' must be a list"),
    (b'{"inputs":[], "outputs": [{"name": "y"}, {"name": "y"}]}', "output 'y' appears twice"),
    (b'{"inputs":[], "id": "\\ud800"}', "not valid JSON"),
    (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[NaN]}]}', "not valid JSON"),
    (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[Infinity]}]}',
     "not valid JSON"),
    (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1e400]}]}', "not valid JSON"),
])
def test_named_hostile_bodies(body: bytes, message: str) -> None:
    with pytest.raises(TensorgateError, match=re.escape(message)):
        decode_infer_request(body, None, "m", "")


def test_parameters_past_int64_travel_as_uint64() -> None:
    body = b'{"inputs":[], "parameters": {"p": 18446744073709551615, "q": -9223372036854775808}}'
    request = decode(body)
    assert request is not None
    assert request.parameters["p"].uint64_param == 2**64 - 1
    assert request.parameters["q"].int64_param == -(2**63)


def test_duplicated_inputs_are_refused() -> None:
    entry = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}
    with pytest.raises(TensorgateError, match="input 'x' appears twice"):
        decode_infer_request(orjson.dumps({"inputs": [entry, entry]}), None, "m", "")


@pytest.mark.parametrize("depth", [900, 1000, 1023, 1024, 5000, 100_000])
def test_deeply_nested_data_never_exhausts_the_stack(depth: int) -> None:
    data = b"[" * depth + b"1" + b"]" * depth
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":' + data + b"}]}"
    assert decode(body) is None
    deep_shape = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32",
                                           "shape": [1] * min(depth, 1000)}]})[:-3]
    decode(deep_shape + b',"data":' + data + b"}]}")


def test_a_declared_binary_size_larger_than_the_body() -> None:
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1 << 20],
                                       "parameters": {"binary_data_size": 4 << 20}}]})
    with pytest.raises(TensorgateError, match="runs past the end of the body"):
        decode_infer_request(header + b"\0" * 16, len(header), "m", "")


def test_a_binary_size_that_disagrees_with_the_shape() -> None:
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                                       "parameters": {"binary_data_size": 8}}]})
    with pytest.raises(TensorgateError, match="takes 16 bytes, binary_data_size is 8"):
        decode_infer_request(header + b"\0" * 8, len(header), "m", "")


def test_huge_data_arrays_are_checked_against_the_shape_before_conversion() -> None:
    # A million elements against a shape of ten: refused on the count, nothing converted.
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[10],"data":[' + \
        b"0," * 999_999 + b"0]}]}"
    with pytest.raises(TensorgateError, match="needs 10 elements, data has 1000000"):
        decode_infer_request(body, None, "m", "")
    good = body.replace(b"[10]", b"[1000000]")
    assert len(decode_infer_request(good, None, "m", "")[0].raw_input_contents[0]) == 4 * MiB - \
        4 * (MiB - 1_000_000)
