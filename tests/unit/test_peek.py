"""Peeking model name and version from request bytes, against protobuf's own parser."""

from __future__ import annotations

import pytest

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from gateway.peek import model_and_version


def test_finds_name_and_version_past_the_tensors() -> None:
    request = pb.ModelInferRequest(model_name="digits", model_version="2", id="r1")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(b"\x00" * 256)
    request.parameters["priority"].int64_param = 3
    assert model_and_version(request.SerializeToString()) == ("digits", "2")


def test_a_version_appended_later_wins_as_in_protobuf() -> None:
    data = pb.ModelInferRequest(model_name="m", model_version="1").SerializeToString()
    data += pb.ModelInferRequest(model_version="7").SerializeToString()
    assert pb.ModelInferRequest.FromString(data).model_version == "7"
    assert model_and_version(data) == ("m", "7")


@pytest.mark.parametrize("data", [b"\x08\x01", b"\x10\x01", b"\x0d\x01m\x12\x01",
                                  b"\x09\x01m\x12\x011*\r\n"])
def test_a_name_field_of_another_wire_type_is_unknown_as_to_protobuf(data: bytes) -> None:
    parsed = pb.ModelInferRequest.FromString(data)
    assert (parsed.model_name, parsed.model_version) == ("", "")
    assert model_and_version(data) == ("", "")


def test_missing_version_is_empty() -> None:
    assert model_and_version(pb.ModelInferRequest(model_name="m").SerializeToString()) == ("m", "")


@pytest.mark.parametrize("data", [b"\x0a\x10abc", b"\x0a", b"\x0f\x00", b"\x80" * 11])
def test_malformed_bytes_get_invalid_argument(data: bytes) -> None:
    with pytest.raises(TensorgateError, match="malformed request"):
        model_and_version(data)
