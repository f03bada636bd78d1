"""Hostile bodies sent to a live gateway: each gets a 4xx naming the fault, and good requests
keep working afterwards."""

from __future__ import annotations

import http.client
import zlib

import grpc
import orjson
import pytest

from common.proto import grpc_service_pb2 as pb
from tests.integration.conftest import Servers

PATH = "/v2/models/digits/infer"
GOOD = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64],
                                 "data": [0.5] * 64}]})


def post(servers: Servers, body: bytes, headers: dict[str, str] | None = None,
         path: str = PATH) -> tuple[int, dict]:
    host, port = servers.gateway_http.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, orjson.loads(reply.read() or b"{}")
    finally:
        conn.close()


def entry(**fields: object) -> bytes:
    return orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64],
                                     **fields}]})


def with_binary(declared: int, actual: int, shape: list[int] | None = None) -> tuple[bytes, int]:
    header = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32",
                                       "shape": shape or [1, 64],
                                       "parameters": {"binary_data_size": declared}}]})
    return header + b"\0" * actual, len(header)


BOMB_DEPTH = 100_000
CASES = [
    ("not JSON", b"{inputs", "not valid JSON"),
    ("deep JSON", b'{"inputs":' + b"[" * BOMB_DEPTH + b"]" * BOMB_DEPTH + b"}", "not valid JSON"),
    ("deep data", entry(data=[[[[[[0.5]]]]]] * 64), "data is nested deeper than shape"),
    ("overflowing shape", entry(shape=[1 << 32, 1 << 32, 1 << 32], data=[0]), "too many elements"),
    ("dim past int64", entry(shape=[0, 2**64 - 1], data=[]), "dimension over"),
    ("negative dim", entry(shape=[1, -64], data=[0]), "negative dimension"),
    ("unknown datatype", entry(datatype="FLOAT", data=[0]), "unknown datatype 'FLOAT'"),
    ("null in data", entry(data=[None] * 64), "got null"),
    ("NaN literal", GOOD.replace(b"0.5]", b"NaN]"), "not valid JSON"),
    ("infinity", GOOD.replace(b"0.5]", b"1e999]"), "not valid JSON"),
    ("FP32 overflow", entry(data=[1e300] * 64), "not valid FP32"),
    ("huge data", entry(data=[0.5] * 1_000_000), "needs 64 elements, data has 1000000"),
    ("duplicated inputs", orjson.dumps({"inputs": orjson.loads(GOOD)["inputs"] * 2}),
     "input 'INPUT0' appears twice"),
    ("BYTES to FP32 model", entry(datatype="BYTES", shape=[1, 64], data=["a"] * 64),
     "expected datatype FP32, got BYTES"),
]


@pytest.mark.parametrize(("name", "body", "message"), CASES, ids=[c[0] for c in CASES])
def test_hostile_json_bodies(servers: Servers, name: str, body: bytes, message: str) -> None:
    status, answer = post(servers, body)
    assert 400 <= status < 500, (status, answer)
    assert message in answer["error"]
    assert post(servers, GOOD)[0] == 200


@pytest.mark.parametrize(("declared", "actual", "shape", "message"), [
    (1 << 30, 256, None, "runs past the end of the body"),
    (256, 4096, None, "bytes beyond the binary tensors"),
    (128, 128, None, "takes 256 bytes, binary_data_size is 128"),
    (-1, 0, None, "runs past the end"),
])
def test_hostile_binary_bodies(servers: Servers, declared: int, actual: int,
                               shape: list[int] | None, message: str) -> None:
    body, length = with_binary(declared, actual, shape)
    status, answer = post(servers, body, {"Inference-Header-Content-Length": str(length)})
    assert status == 400 and message in answer["error"], answer
    assert post(servers, GOOD)[0] == 200


@pytest.mark.parametrize(("headers", "message"), [
    ({"Inference-Header-Content-Length": "99999999"}, "exceeds the body"),
    ({"Inference-Header-Content-Length": "-5"}, "must be a whole number"),
    ({"Inference-Header-Content-Length": "12abc"}, "must be a whole number"),
    ({"Content-Encoding": "gzip"}, "not valid gzip"),
])
def test_hostile_headers(servers: Servers, headers: dict[str, str], message: str) -> None:
    status, answer = post(servers, GOOD, headers)
    assert status == 400 and message in answer["error"], answer
    assert post(servers, GOOD)[0] == 200


def test_a_unicode_digit_in_the_header_length_gets_400(servers: Servers) -> None:
    status, _ = post(servers, GOOD, {"Inference-Header-Content-Length": "\u00b2"})
    assert status == 400


def test_a_gzip_bomb_is_refused_at_the_body_limit(servers: Servers) -> None:
    # ~300 KiB that inflate past the 256 MiB limit, made a MiB at a time to spare this process.
    packer = zlib.compressobj(9)
    chunk = b"\0" * (1 << 20)
    bomb = b"".join(packer.compress(chunk) for _ in range(300)) + packer.flush()
    status, answer = post(servers, bomb, {"Content-Encoding": "deflate"})
    assert status == 400 and "exceeds the limit" in answer["error"]


def test_hostile_grpc_bytes(servers: Servers) -> None:
    with grpc.insecure_channel(servers.gateway_grpc) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for data, message in [(b"\x0a\xff\xff\xff\x0f", "runs past the end"),
                              (b"\x09\x00", "fixed-size field"),
                              (b"\x0a\x06digits" + b"\x1a\x00" * 70_000, "more than 65536 fields")]:
            with pytest.raises(grpc.RpcError) as caught:
                infer(data, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (caught.value.details() or "")
        good = pb.ModelInferRequest(model_name="digits")
        good.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
        good.raw_input_contents.append(b"\0" * 256)
        assert pb.ModelInferResponse.FromString(infer(good.SerializeToString(), timeout=30))
