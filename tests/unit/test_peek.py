"""Peeking model name and version from request bytes, against protobuf's own parser."""

from __future__ import annotations

import pytest

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from gateway.peek import _infer_fields, infer_fields, model_and_version


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


def _requests() -> list[bytes]:
    """Messages the hot path's walk reads, and ones it leaves to the general walk."""
    small = pb.ModelInferRequest(model_name="digits", model_version="1", id="r")
    small.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    small.raw_input_contents.append(b"\x01" * 256)
    large = pb.ModelInferRequest(model_name="m", id="é")
    large.raw_input_contents.append(b"\x02" * 70_000)  # a three-byte length
    large.parameters["timeout"].int64_param = 250_000
    large.parameters["priority"].int64_param = 1
    timed = small.SerializeToString() + pb.ModelInferRequest(
        parameters={"timeout": pb.InferParameter(uint64_param=5)}).SerializeToString()
    return [small.SerializeToString(), large.SerializeToString(), timed,
            b"\x08\x01\x0a\x01m",  # a varint field 1: unknown to protobuf, read generally
            b"\xa2\x01\x00\x0a\x01m",  # field 20: a two-byte key
            b""]


@pytest.mark.parametrize("data", _requests())
def test_the_hot_path_walk_reads_what_the_general_one_does(data: bytes) -> None:
    parsed = pb.ModelInferRequest.FromString(data)
    fields = infer_fields(data)
    assert fields == _infer_fields(data)
    assert fields[:3] == (parsed.model_name, parsed.model_version, parsed.id)


@pytest.mark.parametrize("data", [b"\x0a\x10abc", b"\x0a", b"\x0a\xff", b"\x12\x80\x80",
                                  b"\x0a" + b"\xff" * 11, b"\x02\x00", b"\x1a\x00" * 70_000])
def test_malformed_bytes_say_why_whichever_walk_sees_them(data: bytes) -> None:
    with pytest.raises(TensorgateError, match="malformed request") as fast:
        infer_fields(data)
    with pytest.raises(TensorgateError) as general:
        _infer_fields(data)
    assert fast.value.message == general.value.message
