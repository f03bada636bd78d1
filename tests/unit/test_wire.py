"""Protobuf fields written by hand (common/wire.py) read back as protobuf reads them."""

from __future__ import annotations

import pytest

from common import wire
from common.proto import grpc_service_pb2 as pb


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32 - 1, 2**63 - 1])
def test_an_encoded_varint_reads_back_to_itself(value: int) -> None:
    encoded = wire.encode_varint(value)
    assert wire.varint(encoded, 0) == (value, len(encoded))


def test_an_appended_field_is_what_protobuf_reads() -> None:
    request = pb.ModelInferRequest(model_name="digits", id="old")
    data = request.SerializeToString() + wire.length_delimited(3, b"x" * 200)
    parsed = pb.ModelInferRequest.FromString(data)
    assert parsed.id == "x" * 200 and parsed.model_name == "digits"
