"""A request id and a deadline travel gateway → runtime; the id comes back, the deadline holds."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import tritonclient.grpc as tgrpc

from tests.integration.conftest import Servers


def post(servers: Servers, body: dict) -> tuple[dict, str]:
    request = urllib.request.Request(f"http://{servers.gateway_http}/v2/models/digits/infer",
                                     data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read()), answer.headers["x-request-id"]


def body(**extra: str) -> dict:
    return {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64],
                        "data": [0.5] * 64}], **extra}


def test_http_echoes_the_callers_id_in_the_body_and_a_header(servers: Servers) -> None:
    answer, header = post(servers, body(id="order-17"))
    assert answer["id"] == header == "order-17"


def test_http_gives_a_request_without_an_id_a_fresh_one(servers: Servers) -> None:
    (first, first_header), (second, _) = post(servers, body()), post(servers, body())
    assert first["id"] == first_header and first["id"]
    assert first["id"] != second["id"]


def test_grpc_keeps_the_callers_id_or_gives_one(servers: Servers) -> None:
    tensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.full((1, 64), 0.5, np.float32))
    client = tgrpc.InferenceServerClient(servers.gateway_grpc)
    assert client.infer("digits", [tensor], request_id="abc").get_response().id == "abc"
    given = client.infer("digits", [tensor]).get_response().id
    assert given and given != "abc"


def status_of(servers: Servers, payload: dict) -> int:
    request = urllib.request.Request(f"http://{servers.gateway_http}/v2/models/digits/infer",
                                     data=json.dumps(payload).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_http_timeout_parameter_is_the_requests_deadline(servers: Servers) -> None:
    assert status_of(servers, {**body(), "parameters": {"timeout": 1}}) == 504
    assert status_of(servers, {**body(), "parameters": {"timeout": 10_000_000}}) == 200
    assert status_of(servers, {**body(), "parameters": {"timeout": "soon"}}) == 400
