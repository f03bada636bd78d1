"""HTTP infer without ASGI against a real runtime worker: pipelined requests on one raw socket,
tritonclient's calls, and a client that goes away, whose call ends and frees its lane slot."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.http as thttp

from loadtest.sleepy import sleepy_model
from tests.integration import sleepy_stack
from tests.unit.http_wire import CEILING_S, Reader
from tests.waiting import until

ROOT = Path(__file__).resolve().parents[2]
#: Far longer than any wait below: a call that ends did so because its client went away.
DEADLINE_S = 600.0


class Stack(sleepy_stack.Stack):
    """digits and `stuck` (hangs until released), the gateway's default deadline DEADLINE_S."""

    def __init__(self) -> None:
        super().__init__(lambda release: [sleepy_model(-1, 2, release, name="stuck")],
                         DEADLINE_S)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.gateway.http_port), timeout=CEILING_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack() as running:
        yield running


def digits_request(rows: np.ndarray, request_id: str) -> bytes:
    data = rows.astype("<f4").tobytes()
    header = orjson.dumps({"id": request_id, "parameters": {"binary_data_output": True},
                           "inputs": [{"name": "INPUT0", "datatype": "FP32",
                                       "shape": list(rows.shape),
                                       "parameters": {"binary_data_size": len(data)}}]})
    return (b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Inference-Header-Content-Length: %d\r\n\r\n" % (len(header) + len(data),
                                                              len(header))) + header + data


def test_pipelined_infers_and_control_calls_are_answered_in_order(stack: Stack) -> None:
    rng = np.random.default_rng(3)
    batches = [rng.random((n, 64), dtype=np.float32) for n in (1, 4, 2)]
    requests = [digits_request(batches[0], "one"), b"GET /v2/models/digits HTTP/1.1\r\n"
                b"Host: x\r\n\r\n", digits_request(batches[1], "two"),
                b"POST /v2/models/nosuch/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"\r\n{}", digits_request(batches[2], "three")]
    with stack.connect() as sock:
        sock.sendall(b"".join(requests))
        reader = Reader(sock)
        answers = [reader.next() for _ in requests]
    assert [a.status for a in answers] == [200, 200, 200, 400, 200]
    assert orjson.loads(answers[1].body)["name"] == "digits"
    for answer, rows, name in zip([answers[0], answers[2], answers[4]], batches,
                                  ("one", "two", "three"), strict=True):
        assert answer.headers["x-request-id"] == name
        assert answer.json()["outputs"][0]["shape"] == [len(rows), 10]
        assert len(answer.output()) == len(rows) * 10 * 4


def test_tritonclient_http_infers_through_the_fast_path(stack: Stack) -> None:
    client = thttp.InferenceServerClient(f"127.0.0.1:{stack.gateway.http_port}")
    rows = np.random.default_rng(4).random((3, 64), dtype=np.float32)
    for binary in (True, False):
        tensor = thttp.InferInput("INPUT0", [3, 64], "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        wanted = thttp.InferRequestedOutput("OUTPUT0", binary_data=binary)
        result = client.infer("digits", [tensor], outputs=[wanted], request_id=f"b{binary}")
        assert result.as_numpy("OUTPUT0").shape == (3, 10)
        assert result.get_response()["id"] == f"b{binary}"


def test_a_client_gone_mid_request_ends_its_call_and_frees_its_lane_slot(stack: Stack) -> None:
    pipeline = stack.gateway.pipeline
    upstream = stack.gateway.router.endpoints[0].upstream
    data = np.ones(4, "<f4").tobytes()
    header = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4],
                                       "parameters": {"binary_data_size": len(data)}}]})
    with stack.connect() as sock:
        sock.sendall(b"POST /v2/models/stuck/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                     b"Inference-Header-Content-Length: %d\r\n\r\n"
                     % (len(header) + len(data), len(header)) + header + data)
        until(lambda: upstream.outstanding == 1, "the call at the lane", CEILING_S)
    until(lambda: upstream.outstanding == 0 and pipeline.admission.in_flight == 0,
          "the lane and the admission empty", CEILING_S)
