"""The runtime's shared-memory regions: register, lease, write, unregister, and what each refuses.

Real POSIX shm objects (multiprocessing's), mapped as a worker maps a client's."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from runtime.decode import decode_infer
from runtime.shm import Regions
from runtime.shm_infer import Lease

OWNER = "0123456789abcdef"


@pytest.fixture
def shm() -> Iterator[shared_memory.SharedMemory]:
    made = shared_memory.SharedMemory(f"h19u-{os.getpid()}", create=True, size=4096)
    yield made
    made.close()
    made.unlink()


def key(made: shared_memory.SharedMemory) -> str:
    return f"/{made.name.lstrip('/')}"


def request(inputs: list[tuple[str, int, int] | None], outputs: list[tuple[str, int, int]],
            raw: int = 0) -> pb.ModelInferRequest:
    """Inputs X0.. (in a region when given one), outputs Y0..; `raw` raw_input_contents."""
    message = pb.ModelInferRequest(model_name="m")
    for i, span in enumerate(inputs):
        tensor = message.inputs.add(name=f"X{i}", datatype="FP32", shape=[4])
        if span is not None:
            _point(tensor.parameters, *span)
    for i, span in enumerate(outputs):
        _point(message.outputs.add(name=f"Y{i}").parameters, *span)
    message.raw_input_contents.extend(bytes([i]) * 16 for i in range(raw))
    return message


def _point(parameters: object, region: str, offset: int, size: int) -> None:
    parameters["shared_memory_region"].string_param = region  # type: ignore[index]
    parameters["shared_memory_byte_size"].int64_param = size  # type: ignore[index]
    parameters["shared_memory_offset"].int64_param = offset  # type: ignore[index]


def test_inputs_are_read_in_place_and_raw_contents_fill_the_others(shm) -> None:
    regions = Regions()
    regions.register(f"{OWNER}/r", key(shm), 0, 1024)
    shm.buf[32:48] = np.arange(4, dtype=np.float32).tobytes()
    call = decode_infer(request([None, (f"{OWNER}/r", 32, 16), None], [], raw=2)
                        .SerializeToString())
    assert call.shm
    lease = Lease(regions, call)
    raw = lease.call.raw
    assert [bytes(r) for r in (raw[0], raw[2])] == [b"\0" * 16, b"\1" * 16]  # type: ignore[arg-type]
    assert np.frombuffer(raw[1], np.float32).tolist() == [0, 1, 2, 3]  # type: ignore[arg-type]
    shm.buf[32:36] = np.float32(7).tobytes()  # NOTE: a view, not a copy
    assert np.frombuffer(raw[1], np.float32)[0] == 7  # type: ignore[arg-type]
    lease.release()
    regions.close()


async def test_outputs_are_written_and_answered_without_their_bytes(shm) -> None:
    regions = Regions()
    regions.register(f"{OWNER}/out", key(shm), 64, 128)
    call = decode_infer(request([], [(f"{OWNER}/out", 16, 16)]).SerializeToString())
    lease = Lease(regions, call)
    answer = _answer()
    await lease.write(answer)
    assert np.frombuffer(shm.buf[80:96], np.float32).tolist() == [2, 2, 2, 2]
    assert list(answer.raw_output_contents) == [b"", b"zzzz"]  # the place of Y0 kept
    small = Lease(regions, decode_infer(request([], [(f"{OWNER}/out", 0, 8)])
                                        .SerializeToString()))
    with pytest.raises(TensorgateError, match=r"output 'Y0' takes 16 bytes; shared memory "
                                              r"region 'out' gives it 8"):
        await small.write(_answer())
    lease.release()
    small.release()
    regions.close()


def _answer() -> pb.ModelInferResponse:
    answer = pb.ModelInferResponse()
    answer.outputs.add(name="Y0", datatype="FP32", shape=[4])
    answer.outputs.add(name="Z", datatype="FP32", shape=[1])
    answer.raw_output_contents.extend([np.full(4, 2, np.float32).tobytes(), b"zzzz"])
    return answer


def test_a_span_outside_the_region_or_an_unknown_region_is_refused(shm) -> None:
    regions = Regions()
    regions.register(f"{OWNER}/r", key(shm), 0, 64)
    outside = request([(f"{OWNER}/r", 60, 16)], [])
    with pytest.raises(TensorgateError, match=r"input 'X0': offset 60 \+ byte_size 16 is "
                                              r"outside shared memory region 'r' \(64 bytes\)"):
        Lease(regions, decode_infer(outside.SerializeToString()))
    unknown = request([(f"{OWNER}/r", 0, 16)], [("fedcba9876543210/r", 0, 16)])
    with pytest.raises(TensorgateError, match="no shared memory region 'r'") as caught:
        Lease(regions, decode_infer(unknown.SerializeToString()))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert next(iter(regions)).users == 0  # the input's hold given back on the failure
    regions.close()


async def test_unregister_waits_for_the_requests_using_the_region(shm) -> None:
    regions = Regions()
    regions.register(f"{OWNER}/r", key(shm), 0, 64)
    lease = Lease(regions, decode_infer(request([(f"{OWNER}/r", 0, 16)], [])
                                        .SerializeToString()))
    waiting = asyncio.ensure_future(regions.unregister(f"{OWNER}/r", wait_s=60))
    await asyncio.sleep(0)
    assert not waiting.done() and not regions.table  # gone at once for new requests
    lease.release()
    await asyncio.wait_for(waiting, 30)
    late = Lease(regions, decode_infer(request([], []).SerializeToString()))
    late.release()


async def test_unregister_gives_up_after_its_wait_and_the_region_stays_gone(shm) -> None:
    regions = Regions()
    regions.register(f"{OWNER}/r", key(shm), 0, 64)
    lease = Lease(regions, decode_infer(request([(f"{OWNER}/r", 0, 16)], [])
                                        .SerializeToString()))
    with pytest.raises(TensorgateError, match="1 requests still using") as caught:
        await regions.unregister("", wait_s=0.01)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not regions.table
    lease.release()


def test_register_refuses_duplicates_too_many_and_spans_past_the_object(shm) -> None:
    regions = Regions(limit=1)
    with pytest.raises(TensorgateError, match=r"offset 4090 \+ byte_size 16 runs past the end"):
        regions.register(f"{OWNER}/r", key(shm), 4090, 16)
    regions.register(f"{OWNER}/r", key(shm), 0, 64)
    with pytest.raises(TensorgateError, match="already registered") as twice:
        regions.register(f"{OWNER}/r", key(shm), 0, 64)
    assert twice.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(TensorgateError, match="holds 1 regions already") as full:
        regions.register(f"{OWNER}/s", key(shm), 0, 64)
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    regions.limit = 2
    with pytest.raises(TensorgateError, match="registered by another caller") as theirs:
        regions.register("fedcba9876543210/s", key(shm), 0, 64)
    assert theirs.value.code == grpc.StatusCode.PERMISSION_DENIED
    regions.close()


def test_a_shrunk_object_is_refused_before_it_is_read(shm) -> None:
    regions = Regions()
    regions.register(f"{OWNER}/r", key(shm), 0, 4096)
    os.truncate(f"/dev/shm/{key(shm)[1:]}", 1024)
    with pytest.raises(TensorgateError, match="was shrunk") as caught:
        Lease(regions, decode_infer(request([(f"{OWNER}/r", 0, 16)], []).SerializeToString()))
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    regions.close()


def test_only_regular_objects_are_opened_never_through_a_link(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"\0" * 64)
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "folder").mkdir()
    regions = Regions(root=tmp_path)
    for name in ("link", "folder"):
        with pytest.raises(TensorgateError, match=f"'/{name}'") as caught:
            regions.register(f"{OWNER}/r", f"/{name}", 0, 16)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    regions.register(f"{OWNER}/r", "/target", 0, 16)
    assert [r.name for r in regions] == [f"{OWNER}/r"]
    regions.close()
