"""Fields appended to serialized requests read back as set, and leave the tensors alone."""

from __future__ import annotations

import numpy as np

from common.proto import grpc_service_pb2 as pb
from gateway.peek import routing_fields
from gateway.rewrite import with_id, with_parameter, with_version


def request() -> bytes:
    message = pb.ModelInferRequest(model_name="digits", model_version="1", id="old")
    message.parameters["priority"].int64_param = 3
    message.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    message.raw_input_contents.append(np.arange(4, dtype="<f4").tobytes())
    return message.SerializeToString()


def test_an_appended_id_and_version_win_and_the_peek_sees_them() -> None:
    rewritten = with_id(with_version(request(), "2"), "req-7ü")
    parsed = pb.ModelInferRequest.FromString(rewritten)
    assert (parsed.model_version, parsed.id) == ("2", "req-7ü")
    assert routing_fields(rewritten) == ("digits", "2", "req-7ü")
    assert parsed.raw_input_contents[0] == np.arange(4, dtype="<f4").tobytes()


def test_an_appended_parameter_joins_the_others() -> None:
    value = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    parsed = pb.ModelInferRequest.FromString(with_parameter(request(), "traceparent", value))
    assert parsed.parameters["traceparent"].string_param == value
    assert parsed.parameters["priority"].int64_param == 3


def test_a_long_value_gets_a_multi_byte_length() -> None:
    parsed = pb.ModelInferRequest.FromString(with_id(request(), "x" * 300))
    assert parsed.id == "x" * 300


def test_an_id_of_any_length_reads_back_whole() -> None:
    for size in (0, 1, 127, 128, 300, 20_000):
        rewritten = with_id(request(), "i" * size)
        assert pb.ModelInferRequest.FromString(rewritten).id == "i" * size
        assert routing_fields(rewritten) == ("digits", "1", "i" * size)
