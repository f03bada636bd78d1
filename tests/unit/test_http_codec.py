"""HTTP bodies (JSON and the binary tensor extension) to gRPC messages and back."""

from __future__ import annotations

import json
import re

import numpy as np
import orjson
import pytest

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from gateway.http_codec import (
    OutputPrefs,
    decode_infer_request,
    encode_infer_response,
    message_to_json,
)


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, int]:
    text = orjson.dumps(header)
    return text + b"".join(blobs), len(text)


def test_json_inputs_become_raw_contents() -> None:
    body = orjson.dumps({"id": "r1", "inputs": [
        {"name": "X", "datatype": "INT32", "shape": [1, 2], "data": [[1, 2]]}]})
    request, prefs = decode_infer_request(body, None, "m", "3")
    assert (request.model_name, request.model_version, request.id) == ("m", "3", "r1")
    assert list(request.inputs[0].shape) == [1, 2]
    assert request.raw_input_contents[0] == np.array([1, 2], "<i4").tobytes()
    assert prefs == OutputPrefs(default_binary=False)


def test_binary_inputs_are_sliced_in_header_order() -> None:
    a, b = np.arange(4, dtype="<f4").tobytes(), np.arange(2, dtype="<i8").tobytes()
    body, length = binary_body({"inputs": [
        {"name": "A", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}},
        {"name": "B", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}},
    ], "parameters": {"binary_data_output": True}}, a, b)
    request, prefs = decode_infer_request(body, length, "m", "")
    assert list(request.raw_input_contents) == [a, b]
    assert prefs.default_binary is True
    assert "binary_data_size" not in request.inputs[0].parameters
    assert "binary_data_output" not in request.parameters


def test_a_declared_binary_size_past_the_body_is_refused() -> None:
    body, length = binary_body({"inputs": [
        {"name": "A", "datatype": "FP32", "shape": [4],
         "parameters": {"binary_data_size": 64}}]}, b"\x00" * 16)
    with pytest.raises(TensorgateError, match="binary_data_size 64 runs past the end"):
        decode_infer_request(body, length, "m", "")


def test_header_length_longer_than_body_is_refused() -> None:
    with pytest.raises(TensorgateError, match="exceeds the body"):
        decode_infer_request(b"{}", 10, "m", "")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "a JSON object with an 'inputs' list"),
        (b'{"inputs": [{"datatype": "FP32"}]}', "inputs[0] must be an object with a 'name'"),
        (b'{"inputs": [{"name": "X", "shape": [1], "data": [1]}]}', "'datatype' must be"),
        (b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": "1", "data": [1]}]}',
         "'shape' must be a list of integers"),
        (b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}]}', "needs 'data'"),
        (b'{"inputs": [], "parameters": {"p": [1]}}', "parameter 'p' must be"),
    ],
)
def test_malformed_bodies_name_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(TensorgateError, match=re.escape(message)):
        decode_infer_request(body, None, "m", "")


def test_a_stale_header_length_is_named_when_it_cuts_the_json_short() -> None:
    body = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1],
                                     "parameters": {"shared_memory_region": "r"}}]})
    with pytest.raises(TensorgateError, match=re.escape(
            f"its first 20 bytes as Inference-Header-Content-Length says (of a {len(body)}-byte "
            "body), is not valid JSON")):
        decode_infer_request(body, 20, "m", "")


def test_requested_outputs_and_per_output_binary_choice() -> None:
    body = orjson.dumps({"inputs": [], "outputs": [
        {"name": "P", "parameters": {"binary_data": True}}, {"name": "Q"}]})
    request, prefs = decode_infer_request(body, None, "m", "")
    assert [o.name for o in request.outputs] == ["P", "Q"]
    assert prefs.per_output == {"P": True}


def response() -> pb.ModelInferResponse:
    answer = pb.ModelInferResponse(model_name="m", model_version="1", id="r1")
    answer.outputs.add(name="P", datatype="FP32", shape=[1, 2])
    answer.outputs.add(name="Q", datatype="INT8", shape=[2])
    answer.raw_output_contents.extend([np.array([0.5, 1.5], "<f4").tobytes(), b"\x01\xff"])
    return answer


def test_json_response_carries_data() -> None:
    body, length = encode_infer_response(response(), OutputPrefs())
    assert length is None
    parsed = orjson.loads(body)
    assert parsed["outputs"][0]["data"] == [0.5, 1.5]
    assert parsed["outputs"][1]["data"] == [1, -1]
    assert parsed["id"] == "r1" and parsed["model_version"] == "1"


def test_binary_response_appends_tensors_after_the_json() -> None:
    body, length = encode_infer_response(response(), OutputPrefs(per_output={"P": True}))
    assert length is not None
    header = orjson.loads(body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert "data" not in header["outputs"][0]
    assert header["outputs"][1]["data"] == [1, -1]
    assert body[length:] == np.array([0.5, 1.5], "<f4").tobytes()


def test_message_to_json_keeps_integers_as_numbers() -> None:
    stats = pb.ModelStatisticsResponse()
    entry = stats.model_stats.add(name="m", version="1", inference_count=2**40,
                                  execution_count=3)
    entry.inference_stats.success.count = 5
    as_json = message_to_json(stats)
    first = as_json["model_stats"][0]
    assert first["inference_count"] == 2**40 and first["execution_count"] == 3
    assert first["inference_stats"]["success"] == {"count": 5, "ns": 0}


def infer_body(**extra: object) -> bytes:
    return orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 2],
                                     "data": [0.5, 0.5]}], **extra})


@pytest.mark.parametrize("request_id", ["a\r\nb", "nul\0", "tab\there", "x" * 257])
def test_probe_11_an_id_that_cannot_be_a_header_is_refused(request_id: str) -> None:
    with pytest.raises(TensorgateError) as caught:
        decode_infer_request(infer_body(id=request_id), None, "m", "")
    assert "'id' must be at most 256 characters without control characters" in \
        caught.value.message


def test_a_printable_id_of_the_longest_length_is_kept() -> None:
    request, _ = decode_infer_request(infer_body(id="é-" + "x" * 254), None, "m", "")
    assert request.id == "é-" + "x" * 254


@pytest.mark.parametrize("where", ["request", "input"])
def test_probe_11_an_integer_parameter_past_64_bits_is_refused(where: str) -> None:
    params = b'{"big": 1180591620717411303424}'  # 2**70: orjson alone reads it as a float
    extra = b', "parameters": ' + params
    body = (b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1.0]'
            + (extra if where == "input" else b"") + b"}]"
            + (extra if where == "request" else b"") + b"}")
    with pytest.raises(TensorgateError) as caught:
        decode_infer_request(body, None, "m", "")
    assert "parameter 'big' must be a string, a number within 64 bits" in caught.value.message


def test_large_double_parameters_stay_doubles() -> None:
    request, _ = decode_infer_request(infer_body(parameters={"d": 1e21, "u": 2**64 - 1}),
                                      None, "m", "")
    assert request.parameters["d"].double_param == 1e21
    assert request.parameters["u"].uint64_param == 2**64 - 1


def test_probe_11_data_nested_deeper_than_the_shape_is_refused() -> None:
    body = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 2],
                                     "data": [[[0.5, 0.5]]]}]})
    with pytest.raises(TensorgateError) as caught:
        decode_infer_request(body, None, "m", "")
    assert "data is nested deeper than shape [1, 2]" in caught.value.message


def test_probe_11_nan_and_infinities_come_back_as_json_tokens() -> None:
    values = np.array([np.nan, np.inf, -np.inf, 1.5], "<f4")
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="r")
    response.outputs.add(name="Y", datatype="FP32", shape=[4])
    response.raw_output_contents.append(values.tobytes())
    body, json_length = encode_infer_response(response, OutputPrefs())
    assert json_length is None
    assert b"[NaN,Infinity,-Infinity,1.5]" in body
    data = json.loads(body)["outputs"][0]["data"]
    assert np.array_equal(np.array(data, "<f4"), values, equal_nan=True)


def test_finite_outputs_keep_the_fast_encoder() -> None:
    response = pb.ModelInferResponse(model_name="m", model_version="1")
    response.outputs.add(name="Y", datatype="FP64", shape=[2])
    response.raw_output_contents.append(np.array([0.25, 2.0], "<f8").tobytes())
    body, _ = encode_infer_response(response, OutputPrefs())
    assert body == orjson.dumps({"model_name": "m", "model_version": "1", "outputs": [
        {"name": "Y", "datatype": "FP64", "shape": [2], "data": [0.25, 2.0]}]})
