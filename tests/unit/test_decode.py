"""The decode stage: large requests keep their tensors in place and decode like protobuf does."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from common.proto import grpc_service_pb2 as pb
from common.wire import MAX_FIELDS
from runtime.decode import SCAN_FROM_BYTES, decode_infer
from tests.fuzz.strategies import FUZZ


def large_request(sizes: list[int], version_after: str = "") -> bytes:
    request = pb.ModelInferRequest(model_name="resnet", model_version="1", id="r-7")
    request.parameters["priority"].int64_param = 3
    for i, size in enumerate(sizes):
        request.inputs.add(name=f"IN{i}", datatype="UINT8", shape=[1, size])
        request.raw_input_contents.append(bytes([i + 1]) * size)
    request.outputs.add(name="OUT")
    data = request.SerializeToString()
    if version_after:
        # The gateway appends the version it chose after the tensors: the last occurrence wins.
        data += pb.ModelInferRequest(model_version=version_after).SerializeToString()
    return data


def without_raw(message: pb.ModelInferRequest) -> pb.ModelInferRequest:
    copy = pb.ModelInferRequest()
    copy.CopyFrom(message)
    del copy.raw_input_contents[:]
    return copy


def test_a_large_request_leaves_its_tensors_as_views_of_the_received_bytes() -> None:
    data = bytearray(large_request([SCAN_FROM_BYTES, 1000]))
    call = decode_infer(data)
    assert [bytes(r) for r in call.raw] == [b"\1" * SCAN_FROM_BYTES, b"\2" * 1000]
    assert all(isinstance(r, memoryview) and r.obj is data for r in call.raw)
    assert not call.message.raw_input_contents
    whole = pb.ModelInferRequest.FromString(bytes(data))
    assert call.message == without_raw(whole)
    assert call.message.parameters["priority"].int64_param == 3


def test_a_field_after_the_tensors_is_kept_and_wins() -> None:
    call = decode_infer(large_request([SCAN_FROM_BYTES], version_after="2"))
    assert call.message.model_version == "2"
    assert call.message.model_name == "resnet"
    assert len(call.raw) == 1 and len(call.raw[0]) == SCAN_FROM_BYTES


def test_a_tensor_field_of_another_wire_type_is_unknown_as_to_protobuf() -> None:
    data = large_request([SCAN_FROM_BYTES]) + b"\x38\x05"  # field 7 as a varint
    assert len(pb.ModelInferRequest.FromString(data).raw_input_contents) == 1
    call = decode_infer(data)
    assert [len(r) for r in call.raw] == [SCAN_FROM_BYTES]


def test_a_small_request_is_parsed_whole() -> None:
    call = decode_infer(large_request([16]))
    assert list(call.raw) == [b"\1" * 16]
    assert call.message.raw_input_contents[0] == b"\1" * 16


@pytest.mark.parametrize("cut", [1, 2, 100, SCAN_FROM_BYTES // 2])
def test_a_truncated_large_request_is_a_decode_error(cut: int) -> None:
    data = large_request([SCAN_FROM_BYTES * 2])
    with pytest.raises(DecodeError):
        decode_infer(data[:-cut])


def test_a_large_request_of_too_many_fields_is_refused() -> None:
    data = b"\x1a\x00" * (MAX_FIELDS + 1)  # empty ids: fast for protobuf, not for a scan
    assert len(data) >= SCAN_FROM_BYTES
    with pytest.raises(DecodeError, match=f"more than {MAX_FIELDS} fields"):
        decode_infer(data)


@FUZZ
@given(sizes=st.lists(st.integers(0, 3 * SCAN_FROM_BYTES), min_size=1, max_size=3),
       version=st.sampled_from(["", "3", "17"]))
def test_scanning_decodes_as_protobuf_does(sizes: list[int], version: str) -> None:
    data = large_request(sizes, version)
    whole = pb.ModelInferRequest.FromString(data)
    call = decode_infer(data)
    assert [bytes(r) for r in call.raw] == list(whole.raw_input_contents)
    assert without_raw(call.message) == without_raw(whole)


@FUZZ
@given(head=st.binary(max_size=64), tail=st.binary(max_size=64))
def test_hostile_large_bytes_decode_or_raise_decode_error(head: bytes, tail: bytes) -> None:
    data = head + b"\x3a" + b"\x80\x80\x04" + b"\0" * SCAN_FROM_BYTES + tail
    try:
        call = decode_infer(data)
    except DecodeError:
        return
    assert sum(len(r) for r in call.raw) <= len(data)
    assert isinstance(call.message, pb.ModelInferRequest)
