"""Every bad input gets its code (gRPC) and status (HTTP), with a message naming what was wrong."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from common.proto import grpc_service_pb2 as pb
from tests.integration.conftest import Servers

INFER = "/inference.GRPCInferenceService/ModelInfer"


def request(model: str = "digits", version: str = "1", name: str = "INPUT0",
            datatype: str = "FP32", shape: tuple[int, ...] = (1, 64),
            payload: bytes | None = None) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model, model_version=version)
    message.inputs.add(name=name, datatype=datatype, shape=shape)
    count = int(np.prod(shape)) if all(d >= 0 for d in shape) else 0
    message.raw_input_contents.append(payload if payload is not None else b"\x00" * 4 * count)
    return message


def missing_input() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="digits", model_version="1")


CASES = [
    ("unknown model", request(model="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope'"),
    ("unknown version", request(version="9"), grpc.StatusCode.NOT_FOUND,
     "model 'digits' has no version 9"),
    ("bad version", request(version="latest"), grpc.StatusCode.INVALID_ARGUMENT,
     "version must be a positive integer"),
    ("unknown input", request(name="PIXELS"), grpc.StatusCode.INVALID_ARGUMENT,
     "model 'digits' version 1 has no input 'PIXELS'; expected ['INPUT0']"),
    ("missing input", missing_input(), grpc.StatusCode.INVALID_ARGUMENT,
     "missing inputs ['INPUT0']"),
    ("wrong datatype", request(datatype="INT32"), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'INPUT0' of model 'digits' version 1: expected datatype FP32, got INT32"),
    ("wrong shape", request(shape=(1, 63)), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'INPUT0' of model 'digits' version 1: expected shape [-1, 64], got [1, 63]"),
    ("wrong rank", request(shape=(64,)), grpc.StatusCode.INVALID_ARGUMENT,
     "expected shape [-1, 64], got [64]"),
    ("byte length", request(payload=b"\x00" * 100), grpc.StatusCode.INVALID_ARGUMENT,
     "shape [1, 64] of FP32 takes 256 bytes, got 100"),
    ("batch too large", request(shape=(65, 64)), grpc.StatusCode.INVALID_ARGUMENT,
     "batch size 65 is outside 1..64"),
    ("negative dim", request(shape=(-1, 64)), grpc.StatusCode.INVALID_ARGUMENT,
     "shape [-1, 64] has a negative dimension"),
]


@pytest.mark.parametrize("target", ["gateway", "runtime"])
@pytest.mark.parametrize(("case", "message", "code", "text"), CASES, ids=[c[0] for c in CASES])
def test_grpc_bad_requests(servers: Servers, target: str, case: str,
                           message: pb.ModelInferRequest, code: grpc.StatusCode,
                           text: str) -> None:
    url = servers.gateway_grpc if target == "gateway" else servers.runtime_grpc
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary(INFER, request_serializer=None,
                                   response_deserializer=None)
        with pytest.raises(grpc.RpcError) as caught:
            call(message.SerializeToString(), timeout=10)
    assert caught.value.code() == code
    assert text in caught.value.details()


def test_contents_and_raw_together_are_refused(servers: Servers) -> None:
    message = request()
    message.inputs[0].contents.fp32_contents.extend([0.0] * 64)
    with grpc.insecure_channel(servers.gateway_grpc) as channel:
        call = channel.unary_unary(INFER)
        with pytest.raises(grpc.RpcError) as caught:
            call(message.SerializeToString(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contents must not be set when raw_input_contents is used" in caught.value.details()


def test_typed_contents_are_accepted(servers: Servers) -> None:
    message = pb.ModelInferRequest(model_name="digits", model_version="1")
    tensor = message.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend([0.5] * 64)
    with grpc.insecure_channel(servers.gateway_grpc) as channel:
        answer = pb.ModelInferResponse.FromString(
            channel.unary_unary(INFER)(message.SerializeToString(), timeout=10))
    probabilities = np.frombuffer(answer.raw_output_contents[0], "<f4")
    assert probabilities.shape == (10,) and abs(probabilities.sum() - 1) < 1e-4


def http_error(servers: Servers, model: str, x: np.ndarray, datatype: str = "FP32",
               name: str = "INPUT0", version: str = "1") -> InferenceServerException:
    client = thttp.InferenceServerClient(servers.gateway_http)
    tensor = thttp.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [tensor], model_version=version)
    return caught.value


def test_http_errors_use_the_code_table(servers: Servers) -> None:
    rows = np.zeros((1, 64), np.float32)
    assert http_error(servers, "nope", rows).status() == "404"
    wrong = http_error(servers, "digits", np.zeros((1, 63), np.float32))
    assert wrong.status() == "400"
    assert "expected shape [-1, 64], got [1, 63]" in wrong.message()
    typed = http_error(servers, "digits", np.zeros((1, 64), np.int32), datatype="INT32")
    assert "expected datatype FP32, got INT32" in typed.message()
    big = http_error(servers, "digits", np.zeros((65, 64), np.float32))
    assert big.status() == "400" and "batch size 65" in big.message()


def test_http_error_bodies_are_json_with_an_error_key(servers: Servers) -> None:
    import urllib.error
    import urllib.request

    url = f"http://{servers.gateway_http}/v2/models/digits/infer"
    body = b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1]}]}'
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"))
    assert caught.value.code == 400
    assert caught.value.headers["content-type"] == "application/json"
    import json

    error = json.loads(caught.value.read())
    assert "needs 2 elements, data has 1" in error["error"]
    with pytest.raises(urllib.error.HTTPError) as unknown:
        urllib.request.urlopen(f"http://{servers.gateway_http}/v3/nothing")
    assert unknown.value.code == 404
