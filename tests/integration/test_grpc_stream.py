"""gRPC ModelStreamInfer through the gateway with tritonclient's stream: every message answered in
order with its id, a bad one answered with its error while the stream goes on."""

from __future__ import annotations

import queue
import time
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from common.proto import grpc_service_pb2 as pb
from tests.integration.conftest import Servers

MESSAGES = 40
BAD = 17  # the message that names an input digits does not have


def inputs(seed: int, name: str = "INPUT0") -> list[tgrpc.InferInput]:
    tensor = tgrpc.InferInput(name, [1, 64], "FP32")
    tensor.set_data_from_numpy(np.random.default_rng(seed).random((1, 64), dtype=np.float32))
    return [tensor]


def collect(answers: queue.Queue, count: int, within_s: float = 60.0) -> list[tuple[Any, Any]]:
    """`count` callback results, waiting for each up to what is left of `within_s`."""
    ends = time.monotonic() + within_s
    got = []
    for _ in range(count):
        got.append(answers.get(timeout=max(0.1, ends - time.monotonic())))
    return got


@pytest.fixture
def client(servers: Servers) -> Any:
    client = tgrpc.InferenceServerClient(servers.gateway_grpc)
    yield client
    client.close()


def counted(servers: Servers, code: str) -> float:
    return servers.metrics.get_sample_value(
        "tensorgate_requests_total", {"model": "digits", "protocol": "grpc", "code": code}) or 0.0


def test_every_message_is_answered_in_order_and_a_bad_one_keeps_the_stream_open(
        servers: Servers, client: Any) -> None:
    before = counted(servers, "OK"), counted(servers, "INVALID_ARGUMENT")
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(MESSAGES):
            client.async_stream_infer("digits", inputs(i, "NOPE" if i == BAD else "INPUT0"),
                                      request_id=f"m-{i}")
        got = collect(answers, MESSAGES)
    finally:
        client.stop_stream()
    for i, (result, error) in enumerate(got):
        if i == BAD:
            assert result is None and error is not None
            assert "NOPE" in str(error), error  # names what was wrong
            continue
        assert error is None, (i, error)
        assert result.get_response().id == f"m-{i}"  # ids kept, in the order sent
        assert result.as_numpy("OUTPUT0").shape == (1, 10)
    # each message is a request of its own to the metrics, as a ModelInfer call would be
    assert counted(servers, "OK") - before[0] == MESSAGES - 1
    assert counted(servers, "INVALID_ARGUMENT") - before[1] == 1


def test_the_error_carries_the_id_of_the_message_it_answers(servers: Servers) -> None:
    bad = pb.ModelInferRequest(model_name="no-such-model", id="lost-1")
    good = pb.ModelInferRequest(model_name="digits", id="kept-2")
    tensor = good.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend([0.5] * 64)
    with grpc.insecure_channel(servers.gateway_grpc) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                     request_serializer=pb.ModelInferRequest.SerializeToString,
                                     response_deserializer=pb.ModelStreamInferResponse.FromString)
        first, second = list(call(iter([bad, good]), timeout=60))
    assert "no-such-model" in first.error_message
    assert first.infer_response.id == "lost-1"
    assert second.error_message == "" and second.infer_response.id == "kept-2"


def test_a_cancelled_stream_leaves_the_gateway_serving(client: Any) -> None:
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(MESSAGES):
        client.async_stream_infer("digits", inputs(i), request_id=f"c-{i}")
    client.stop_stream(cancel_requests=True)
    assert client.is_server_ready()
    answer = client.infer("digits", inputs(0), client_timeout=30)
    assert answer.as_numpy("OUTPUT0").shape == (1, 10)
    # a new stream on the same client works as the first did
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        while not answers.empty():  # whatever the cancelled stream answered before it ended
            answers.get_nowait()
        client.async_stream_infer("digits", inputs(1), request_id="after")
        (result, error), = collect(answers, 1)
    finally:
        client.stop_stream()
    assert error is None and result.get_response().id == "after"
