"""Triton's `timeout` request parameter over gRPC as over HTTP (the smaller of it and the call's
deadline wins), and no caller-facing message that names a worker's address or socket path."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from common.proto import grpc_service_pb2 as pb
from tests.integration.test_overload import post
from tests.integration.test_slow_backend import Stack, slow_stack
from tests.integration.test_upstreams import call_through

TIMEOUT_US = 300_000
GRPC_DEADLINE_S = 60.0
#: What would give away where a worker listens.
ADDRESS = re.compile(r"unix:|/tmp/|\.sock|127\.0\.0\.1:")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with slow_stack() as running:
        yield running


def stuck_inputs() -> list[tgrpc.InferInput]:
    tensor = tgrpc.InferInput("INPUT0", [4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32))
    return [tensor]


def test_the_timeout_parameter_ends_a_grpc_call_long_before_its_deadline(stack: Stack) -> None:
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{stack.gateway.grpc_port}")
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("stuck", stuck_inputs(), client_timeout=GRPC_DEADLINE_S,
                     parameters={"timeout": TIMEOUT_US})
    elapsed = time.monotonic() - started
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # NOTE: generous: only "well before the gRPC deadline" is asserted, not a tight time.
    assert elapsed < GRPC_DEADLINE_S / 3, elapsed
    assert not ADDRESS.search(caught.value.message() or ""), caught.value.message()


def test_a_bad_timeout_parameter_is_refused_by_name(stack: Stack) -> None:
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{stack.gateway.grpc_port}")
    with pytest.raises(InferenceServerException) as caught:
        client.infer("stuck", stuck_inputs(), client_timeout=30, parameters={"timeout": "soon"})
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "timeout" in (caught.value.message() or "")


def test_a_streamed_message_keeps_its_timeout_and_the_stream_goes_on(stack: Stack) -> None:
    stuck = pb.ModelInferRequest(model_name="stuck", id="s-1")
    stuck.parameters["timeout"].int64_param = TIMEOUT_US
    tensor = stuck.inputs.add(name="INPUT0", datatype="FP32", shape=[4])
    tensor.contents.fp32_contents.extend([0, 1, 2, 3])
    slow = pb.ModelInferRequest(model_name="slow", id="s-2")
    slow.inputs.add().CopyFrom(tensor)
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway.grpc_port}") as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                     request_serializer=pb.ModelInferRequest.SerializeToString,
                                     response_deserializer=pb.ModelStreamInferResponse.FromString)
        first, second = list(call(iter([stuck, slow]), timeout=GRPC_DEADLINE_S))
    assert "did not answer within" in first.error_message, first
    assert not ADDRESS.search(first.error_message), first.error_message
    assert second.error_message == "" and second.infer_response.id == "s-2"


def test_the_http_504_names_no_address(stack: Stack) -> None:
    body = json.dumps({"parameters": {"timeout": TIMEOUT_US},
                       "inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32",
                                   "data": [0, 1, 2, 3]}]}).encode()
    status, _, answer = post(stack.gateway.http_port, "/v2/models/stuck/infer", body)
    assert status == 504 and "did not answer within" in answer["error"], answer
    assert not ADDRESS.search(answer["error"]), answer


def test_an_unavailable_worker_is_not_named_by_its_socket_path(tmp_path: Path) -> None:
    missing = f"unix:{tmp_path}/lane-0.sock"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(call_through(missing))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details() or ""
    assert "runtime worker" in details and not ADDRESS.search(details), details
