"""Requests with their tensors kept apart (gateway/request_parts.py) and HTTP answers built from
views of the raw outputs: the same messages and bodies as whole bytes give."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from common import lane
from common.arena import Arena
from common.proto import grpc_service_pb2 as pb
from gateway import lane_refs, rewrite
from gateway.http_codec import (
    OutputPrefs,
    decode_infer_answer,
    decode_infer_parts,
    decode_infer_request,
    encode_infer_response,
)
from gateway.request_parts import (
    MAX_TENSORS,
    SPLIT_FROM_BYTES,
    Parts,
    from_head,
    parts_of,
    whole,
)
from gateway.shm import mentions, scope_request


def request(*tensors: bytes, request_id: str = "r1") -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", id=request_id)
    for i, raw in enumerate(tensors):
        message.inputs.add(name=f"IN{i}", datatype="UINT8", shape=[len(raw)])
        message.raw_input_contents.append(raw)
    return message


def test_parts_of_a_whole_request_join_to_the_same_message() -> None:
    tensors = (b"a" * 70000, b"", b"\x00\xff" * 9000)
    message = request(*tensors)
    parts = parts_of(message.SerializeToString())
    assert isinstance(parts, Parts)
    assert [bytes(t) for t in parts.tensors] == list(tensors)
    assert b"a" * 100 not in parts.head  # NOTE: the head holds no tensor byte
    assert len(parts) == len(parts.join()) == len(message.SerializeToString())
    assert pb.ModelInferRequest.FromString(whole(parts)) == message


def test_a_malformed_request_stays_whole() -> None:
    assert parts_of(b"\x3a\xff\xff\xff\x7f") == b"\x3a\xff\xff\xff\x7f"


def test_rewrites_change_the_head_alone() -> None:
    message = request(b"x" * 50000)
    parts = parts_of(message.SerializeToString())
    assert isinstance(parts, Parts)
    changed = rewrite.with_version(rewrite.with_id(parts, "new-id"), "7")
    changed = rewrite.with_parameter(changed, "traceparent", "00-ab-cd-01")
    assert isinstance(changed, Parts) and changed.tensors == parts.tensors
    read = pb.ModelInferRequest.FromString(whole(changed))
    assert (read.id, read.model_version) == ("new-id", "7")
    assert read.parameters["traceparent"].string_param == "00-ab-cd-01"
    assert read.raw_input_contents == message.raw_input_contents


def test_regions_are_found_and_scoped_in_the_head() -> None:
    message = request(b"y" * 40000)
    tensor = message.inputs.add(name="IN_SHM", datatype="UINT8", shape=[4])
    tensor.parameters["shared_memory_region"].string_param = "mine"
    parts = parts_of(message.SerializeToString())
    assert isinstance(parts, Parts) and mentions(parts)
    scoped = scope_request(parts, "alice")
    assert isinstance(scoped, Parts) and scoped.tensors == parts.tensors
    read = pb.ModelInferRequest.FromString(whole(scoped))
    region = read.inputs[1].parameters["shared_memory_region"].string_param
    assert region != "mine" and region.endswith("/mine")
    assert not mentions(parts_of(request(b"z" * 40000).SerializeToString()))


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("count", [12, 6000])
def test_decoded_parts_match_the_whole_decode(binary: bool, count: int) -> None:
    x = np.arange(count, dtype=np.float32)
    item: dict = {"name": "IN", "datatype": "FP32", "shape": [count]}
    if binary:
        item["parameters"] = {"binary_data_size": x.nbytes}
    else:
        item["data"] = x.tolist()
    header = orjson.dumps({"id": "q", "inputs": [item]})
    body = header + (x.tobytes() if binary else b"")
    length = len(header) if binary else None
    head, tensors, _ = decode_infer_parts(body, length, "m", "")
    full, _ = decode_infer_request(body, length, "m", "")
    assembled = from_head(head.SerializeToString(), tensors)
    assert pb.ModelInferRequest.FromString(whole(assembled)) == full
    if len(body) < SPLIT_FROM_BYTES:  # NOTE: so small a request is cheaper whole
        assert tensors == [] and assembled == full.SerializeToString()
        return
    assert [bytes(t) for t in tensors] == [x.tobytes()] and not head.raw_input_contents
    assert isinstance(tensors[0], memoryview) == binary  # NOTE: binary data is not copied
    assert isinstance(assembled, Parts)


def test_large_tensors_are_assembled_in_parts() -> None:
    tensors: list = [memoryview(b"\x05" * SPLIT_FROM_BYTES)]
    head = pb.ModelInferRequest(model_name="m", id="big")
    head.inputs.add(name="IN", datatype="UINT8", shape=[SPLIT_FROM_BYTES])
    assembled = from_head(head.SerializeToString(), tensors)
    assert isinstance(assembled, Parts) and assembled.tensors[0] is tensors[0]
    read = pb.ModelInferRequest.FromString(whole(assembled))
    assert read.id == "big" and read.raw_input_contents == [b"\x05" * SPLIT_FROM_BYTES]


def answer(count: int) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="q")
    floats = np.full(count, 1.5, np.float32)
    floats[1] = np.nan
    response.outputs.add(name="F", datatype="FP32", shape=[count])
    response.raw_output_contents.append(floats.tobytes())
    response.outputs.add(name="T", datatype="BYTES", shape=[2])
    response.raw_output_contents.append(b"\x02\x00\x00\x00hi\x03\x00\x00\x00abc")
    response.outputs.add(name="S", datatype="INT32", shape=[2])
    response.raw_output_contents.append(b"")
    return response


@pytest.mark.parametrize("prefs", [
    OutputPrefs(),
    OutputPrefs(default_binary=True),
    OutputPrefs(per_output={"T": True}, shm={"S"}),
    OutputPrefs(default_binary=True, per_output={"F": False}, shm={"S"}),
])
@pytest.mark.parametrize("count", [3, 8000])
def test_answers_from_views_are_byte_identical(prefs: OutputPrefs, count: int) -> None:
    serialized = answer(count).SerializeToString()
    expected = encode_infer_response(pb.ModelInferResponse.FromString(serialized), prefs)
    head, raws = decode_infer_answer(serialized)
    # NOTE: a small answer is parsed whole (cheaper); a large one's raw outputs are views.
    large = len(serialized) >= SPLIT_FROM_BYTES
    assert large == (count > 3) and len(raws) == 3
    assert all(isinstance(r, memoryview) for r in raws) == large
    assert len(head.raw_output_contents) == (0 if large else 3)
    assert encode_infer_response(head, prefs, raws) == expected


class Connection:
    """What send_infer writes: the frame kind and its pieces."""

    def send_parts(self, kind: int, parts: list, size: int, timeout: float | None) -> None:
        self.kind, self.payload = kind, b"".join(parts)
        assert size == len(self.payload)

    def send(self, kind: int, payload: bytes, timeout: float | None) -> None:
        self.send_parts(kind, [payload], len(payload), timeout)


@pytest.mark.parametrize("split", [True, False])
def test_tensors_are_copied_into_the_arena_as_from_whole_bytes(split: bool) -> None:
    tensors = (b"\x01" * 20000, b"\x02" * 30001)
    whole_bytes = rewrite.with_id(request(*tensors).SerializeToString(), "later")
    assert isinstance(whole_bytes, bytes)
    sent = parts_of(whole_bytes) if split else whole_bytes
    arena = Arena(1 << 20, "tensorgate-test-parts")
    try:
        connection = Connection()
        _, slot = lane_refs.send_infer(connection, arena, sent, 1.0)
        assert slot is not None and connection.kind == lane.INFER_REF
        refs, rest = lane.parse_refs(connection.payload)
        assert [arena.view[at : at + n].tobytes() for at, n in refs] == list(tensors)
        read = pb.ModelInferRequest.FromString(bytes(rest))
        assert read.id == "later" and len(read.raw_input_contents) == 0
        arena.release(slot)
    finally:
        arena.close()


def test_a_small_request_in_parts_goes_by_value_whole() -> None:
    message = request(b"\x03" * 100)
    parts = parts_of(message.SerializeToString())
    connection = Connection()
    arena = Arena(1 << 20, "tensorgate-test-parts")
    try:
        assert lane_refs.send_infer(connection, arena, parts, 1.0)[1] is None
    finally:
        arena.close()
    assert connection.kind == lane.METHOD_KIND["ModelInfer"]
    assert pb.ModelInferRequest.FromString(connection.payload) == message


def test_many_small_fields_make_one_head_span_and_too_many_tensors_stay_whole() -> None:
    fields_only = b"\x0a\x00" * 5000  # 5,000 empty model_name fields: one merged span
    tensor = b"\x3a\x03abc"  # raw_input_contents (field 7), 3 bytes
    parts = parts_of(fields_only + tensor + fields_only)
    assert isinstance(parts, Parts)
    assert parts.head == fields_only * 2 and [bytes(t) for t in parts.tensors] == [b"abc"]
    crowded = tensor * (MAX_TENSORS + 1)
    assert parts_of(crowded) is crowded
