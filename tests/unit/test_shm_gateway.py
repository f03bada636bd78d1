"""The gateway's side of shared memory: requests that name regions found cheaply, their region
names scoped by the caller's owner id, and the HTTP codec's bodies without tensor data."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import orjson
import pytest

from common import EXTENSIONS, regions
from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from gateway.http_codec import decode_infer_request, encode_infer_response
from gateway.shm import CUDA_EXTENSION, SharedMemory, mentions, scope_request


def shm_request(raw_bytes: int = 0) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="X", datatype="FP32", shape=[4])
    tensor.parameters[regions.REGION].string_param = "in"
    tensor.parameters[regions.BYTE_SIZE].int64_param = 16
    message.outputs.add(name="Y").parameters[regions.REGION].string_param = "out"
    plain = message.inputs.add(name="Z", datatype="UINT8", shape=[raw_bytes])
    plain.parameters["note"].string_param = "x"
    message.raw_input_contents.append(b"\1" * raw_bytes)
    return message


@pytest.mark.parametrize("raw_bytes", [4, 200_000])
def test_a_request_naming_a_region_is_found_small_or_large(raw_bytes: int) -> None:
    assert mentions(shm_request(raw_bytes).SerializeToString())
    plain = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\0" * raw_bytes])
    assert not mentions(plain.SerializeToString())


def test_a_large_request_is_not_found_by_bytes_in_its_tensors() -> None:
    plain = pb.ModelInferRequest(model_name="m",
                                 raw_input_contents=[regions.MARK * 10_000])
    assert not mentions(plain.SerializeToString())


def test_region_names_are_scoped_by_the_owner_of_the_subject() -> None:
    alice = pb.ModelInferRequest.FromString(
        scope_request(shm_request(4).SerializeToString(), "key:alice"))
    owner = regions.owner_of("key:alice")
    assert alice.inputs[0].parameters[regions.REGION].string_param == f"{owner}/in"
    assert alice.outputs[0].parameters[regions.REGION].string_param == f"{owner}/out"
    assert alice.raw_input_contents[0] == b"\1" * 4
    assert regions.owner_of("key:bob") != owner and "alice" not in owner


def test_a_bad_region_name_is_refused_before_any_worker_sees_it() -> None:
    message = shm_request()
    message.inputs[0].parameters[regions.REGION].string_param = "../x"
    with pytest.raises(TensorgateError, match="shared memory region name must be"):
        scope_request(message.SerializeToString(), "key:alice")


def test_http_inputs_in_regions_carry_no_data_and_outputs_answer_without_it() -> None:
    body = orjson.dumps({"inputs": [
        {"name": "X", "datatype": "FP32", "shape": [1, 4],
         "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 16}},
        {"name": "Z", "datatype": "INT32", "shape": [1], "data": [7]}],
        "outputs": [{"name": "Y", "parameters": {"binary_data": False,
                                                 "shared_memory_region": "out",
                                                 "shared_memory_byte_size": 40}},
                    {"name": "W", "parameters": {"binary_data": True}}]})
    request, prefs = decode_infer_request(body, None, "m", "")
    assert len(request.raw_input_contents) == 1  # Z's only: X is in its region
    assert request.inputs[0].parameters[regions.REGION].string_param == "in"
    answer = pb.ModelInferResponse(model_name="m", model_version="1")
    answer.outputs.add(name="Y", datatype="FP32", shape=[1, 10])
    answer.outputs.add(name="W", datatype="INT8", shape=[2])
    answer.raw_output_contents.extend([b"", b"\1\2"])
    payload, length = encode_infer_response(answer, prefs)
    assert length is not None
    header = orjson.loads(payload[:length])
    assert header["outputs"][0] == {"name": "Y", "datatype": "FP32", "shape": [1, 10]}
    assert payload[length:] == b"\1\2"


def test_http_input_in_a_region_with_data_too_is_refused() -> None:
    body = orjson.dumps({"inputs": [
        {"name": "X", "datatype": "FP32", "shape": [1], "data": [1.0],
         "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 4}}]})
    with pytest.raises(TensorgateError, match="takes neither 'data'"):
        decode_infer_request(body, None, "m", "")


@pytest.mark.parametrize(("key", "fault"), [
    ("/ok_name-1.x", None), ("/", "POSIX shm name"), ("/a/b", "POSIX shm name"),
    ("/.hidden", "POSIX shm name"), ("/tensorgate-arena", "server's own"),
])
def test_the_key_rule(key: str, fault: str | None) -> None:
    if fault is None:
        assert regions.check_key(key) == key
    else:
        with pytest.raises(TensorgateError, match=fault):
            regions.check_key(key)


class _Upstream:
    """A worker's upstream that answers Server Metadata with the extensions it was given."""

    def __init__(self, extensions: tuple[str, ...] | None) -> None:
        self.extensions = extensions
        self.asked = 0

    async def call(self, name: str, request: bytes, timeout: float | None) -> bytes:
        assert name == "ServerMetadata"
        self.asked += 1
        if self.extensions is None:
            raise TensorgateError(grpc.StatusCode.UNAVAILABLE, "down")
        return pb.ServerMetadataResponse(extensions=self.extensions).SerializeToString()


def _pipeline(*upstreams: _Upstream) -> SimpleNamespace:
    endpoints = [SimpleNamespace(address=f"w{i}", admitted=True, upstream=u)
                 for i, u in enumerate(upstreams)]
    return SimpleNamespace(router=SimpleNamespace(endpoints=endpoints), default_timeout=5.0)


async def test_cuda_shared_memory_is_listed_only_where_every_worker_offers_it() -> None:
    gpu, cpu = _Upstream((*EXTENSIONS, CUDA_EXTENSION)), _Upstream(EXTENSIONS)
    both = SharedMemory(_pipeline(gpu, _Upstream((*EXTENSIONS, CUDA_EXTENSION))))
    assert await both.extensions() == (*EXTENSIONS, CUDA_EXTENSION)
    assert await both.extensions() == (*EXTENSIONS, CUDA_EXTENSION)
    assert gpu.asked == 1  # asked once per worker
    assert await SharedMemory(_pipeline(gpu, cpu)).extensions() == EXTENSIONS
    down = _Upstream(None)
    unknown = SharedMemory(_pipeline(gpu, down))
    assert await unknown.extensions() == EXTENSIONS  # not known: not claimed
    down.extensions = (*EXTENSIONS, CUDA_EXTENSION)
    assert await unknown.extensions() == (*EXTENSIONS, CUDA_EXTENSION)
    assert await SharedMemory(_pipeline()).extensions() == EXTENSIONS
