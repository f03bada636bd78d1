"""HTTP bodies (JSON and the binary tensor extension) to gRPC messages and back."""

from __future__ import annotations

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
