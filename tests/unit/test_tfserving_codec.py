"""The TF Serving / KServe v1 codec: bodies from TF Serving's REST docs, answers in its shapes."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import orjson
import pytest

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from common.tensors import deserialize_bytes, serialize_bytes
from gateway.tfserving import (
    MAX_RANK,
    Predict,
    Signature,
    Spec,
    decode_predict,
    encode_predict,
    metadata_body,
    signature_of,
    status_body,
)

# The three inputs of the examples in TF Serving's REST API documentation.
DOCS = Signature(inputs=(Spec("tag", "BYTES", (-1,)), Spec("signal", "INT32", (-1, 5)),
                         Spec("sensor", "INT32", (-1, 2, 2))),
                 outputs=(Spec("scores", "FP32", (-1, 2)),), versions=("1",))
DIGITS = Signature(inputs=(Spec("INPUT0", "FP32", (-1, 64)),),
                   outputs=(Spec("OUTPUT0", "FP32", (-1, 10)),), versions=("1", "2"))


def decode(body: Any, signature: Signature = DOCS) -> Predict:
    return decode_predict(orjson.dumps(body), signature, "m", "")


def tensors(predict: Predict) -> dict[str, tuple[list[int], bytes]]:
    request = predict.request
    return {t.name: (list(t.shape), raw) for t, raw in zip(request.inputs,
                                                           request.raw_input_contents)}


def test_the_docs_row_body_becomes_one_batch_per_input() -> None:
    body = {"instances": [
        {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
        {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]}]}
    predict = decode(body)
    assert predict.row and predict.batch == 2
    got = tensors(predict)
    assert got["tag"] == ([2], serialize_bytes([b"foo", b"bar"]))
    assert got["signal"][0] == [2, 5]
    assert np.frombuffer(got["sensor"][1], "<i4").tolist() == [1, 2, 3, 4, 4, 5, 6, 8]


def test_the_docs_columnar_body_gives_the_same_tensors_as_the_row_body() -> None:
    columnar = {"inputs": {"tag": ["foo", "bar"], "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
                           "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]]}}
    row = {"instances": [
        {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
        {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]}]}
    predict = decode(columnar)
    assert not predict.row
    assert tensors(predict) == tensors(decode(row))


def test_b64_values_are_decoded_for_string_inputs_only() -> None:
    raw = b"\x00\xffbinary"
    body = {"instances": [{"tag": {"b64": base64.b64encode(raw).decode()},
                           "signal": [1] * 5, "sensor": [[1, 2], [3, 4]]}]}
    assert deserialize_bytes(tensors(decode(body))["tag"][1], "tag") == [raw]
    body["instances"][0]["signal"] = [{"b64": "AA=="}] * 5
    with pytest.raises(TensorgateError, match="string inputs only"):
        decode(body)


def test_one_input_takes_its_value_bare_in_both_formats() -> None:
    rows = [[0.25] * 64, [0.5] * 64]
    for body in ({"instances": rows}, {"inputs": rows}, {"inputs": {"INPUT0": rows}},
                 {"instances": [{"INPUT0": r} for r in rows]}):
        shape, raw = tensors(decode(body, DIGITS))["INPUT0"]
        assert shape == [2, 64] and np.frombuffer(raw, "<f4")[64] == 0.5


@pytest.mark.parametrize(("body", "words"), [
    ({"instances": [[0.5] * 64, [0.5] * 63]}, "ragged"),
    ({"instances": [[0.5] * 64, 0.5]}, "ragged"),
    ({"instances": [[0.5] * 60]}, "shape [64], got [60]"),
    ({"inputs": [0.5] * 64}, "expected shape [any, 64], got [64]"),
    ({"instances": [[True] * 64]}, "numbers"),
    ({"instances": [[0.5] * 64], "inputs": [[0.5] * 64]}, "exactly one"),
    ({}, "exactly one"),
    ({"instances": []}, "empty"),
    ({"instances": [[0.5] * 64], "parameters": {}}, "parameters"),
    ({"instances": 5}, "instances"),
    ({"signature_name": 3, "instances": [[0.5] * 64]}, "signature_name"),
    ({"inputs": {"INPUT0": [[0.5] * 64], "INPUT9": [1]}}, "no input named 'INPUT9'"),
    ({"instances": [{"INPUT0": [0.5] * 64}, [0.5] * 64]}, "every instance names"),
])
def test_bad_bodies_are_refused_naming_the_problem(body: Any, words: str) -> None:
    with pytest.raises(TensorgateError) as caught:
        decode(body, DIGITS)
    assert caught.value.http_status == 400 and words in caught.value.message


def test_several_inputs_need_names_and_all_of_them() -> None:
    with pytest.raises(TensorgateError, match="several inputs"):
        decode({"instances": [[1, 2, 3, 4, 5]]})
    with pytest.raises(TensorgateError, match="'sensor' is missing"):
        decode({"inputs": {"tag": ["a"], "signal": [[1] * 5]}})


def test_deep_nesting_is_refused_without_recursion() -> None:
    deep: Any = 0.5
    for _ in range(MAX_RANK + 5):
        deep = [deep]
    with pytest.raises(TensorgateError, match="nested deeper"):
        decode({"inputs": deep}, DIGITS)
    with pytest.raises(TensorgateError, match="invalid predict body"):
        decode_predict(b"{" + b'"inputs":' + b"[" * 100_000, DIGITS, "m", "")


def answer(*outputs: tuple[str, str, list[int], bytes]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m", model_version="1")
    for name, datatype, shape, raw in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
    return response


def predict_of(row: bool, batch: int) -> Predict:
    return Predict(pb.ModelInferRequest(), row, batch, "")


def test_one_output_row_and_columnar_answers() -> None:
    values = np.arange(6, dtype="<f4").reshape(3, 2)
    response = answer(("scores", "FP32", [3, 2], values.tobytes()))
    assert orjson.loads(encode_predict(response, predict_of(True, 3))) == {
        "predictions": values.tolist()}
    assert orjson.loads(encode_predict(response, predict_of(False, 0))) == {
        "outputs": values.tolist()}


def test_several_outputs_give_one_object_per_instance_or_one_per_output() -> None:
    labels = serialize_bytes([b"cat", b"dog"])
    scores = np.array([0.92, 0.08], "<f4")
    response = answer(("label", "BYTES", [2], labels), ("score", "FP32", [2], scores.tobytes()))
    rows = orjson.loads(encode_predict(response, predict_of(True, 2)))["predictions"]
    assert [r["label"] for r in rows] == ["cat", "dog"]
    assert rows[0]["score"] == pytest.approx(0.92)
    columns = orjson.loads(encode_predict(response, predict_of(False, 0)))["outputs"]
    assert columns["label"] == ["cat", "dog"] and len(columns["score"]) == 2


def test_binary_strings_come_back_as_b64() -> None:
    raw = [b"\xff\x00", b"ok"]
    for name in ("image_bytes", "text"):  # TF's rule by name, and any non-UTF-8 element
        response = answer((name, "BYTES", [2], serialize_bytes(raw)))
        outputs = orjson.loads(encode_predict(response, predict_of(False, 0)))["outputs"]
        assert [base64.b64decode(o["b64"]) for o in outputs] == raw


def test_non_finite_floats_are_written_as_tf_serving_writes_them() -> None:
    response = answer(("scores", "FP32", [1, 2], np.array([np.nan, 1], "<f4").tobytes()))
    text = encode_predict(response, predict_of(True, 1))
    assert b"NaN" in text and json.loads(text)["predictions"][0][1] == 1.0


def test_a_row_answer_needs_one_row_per_instance() -> None:
    response = answer(("scores", "FP32", [2], np.zeros(2, "<f4").tobytes()))
    with pytest.raises(TensorgateError, match="columnar"):
        encode_predict(response, predict_of(True, 3))


def test_metadata_and_status_shapes() -> None:
    meta = pb.ModelMetadataResponse(name="digits", versions=["1", "2"], platform="onnx")
    meta.inputs.add(name="INPUT0", datatype="FP32", shape=[-1, 64])
    meta.outputs.add(name="OUTPUT0", datatype="FP32", shape=[-1, 10])
    signature = signature_of(meta)
    assert signature == DIGITS
    body = metadata_body("digits", "2", signature)
    assert body["model_spec"] == {"name": "digits", "signature_name": "", "version": "2"}
    inputs = body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert inputs["INPUT0"]["dtype"] == "DT_FLOAT"
    assert inputs["INPUT0"]["tensor_shape"]["dim"] == [{"size": "-1"}, {"size": "64"}]
    states = status_body({"1": True, "2": False})["model_version_status"]
    assert [s["state"] for s in states] == ["AVAILABLE", "UNKNOWN"]
    assert states[0]["status"] == {"error_code": "OK", "error_message": ""}
