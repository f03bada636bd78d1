"""The runtime's CUDA shared-memory regions over a stand-in CUDA runtime whose 'device memory' is
host memory (loadtest.host_cuda): register checks, inputs copied out once, outputs copied in,
unregister waiting."""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import os
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from loadtest.host_cuda import HostCuda, regions_with
from runtime import cuda_api
from runtime.cuda_api import CudaError
from runtime.cuda_shm import NO_GPU
from runtime.decode import decode_infer
from runtime.device_rows import DeviceSpan
from runtime.shm_api import shared_memory_methods
from runtime.shm_infer import Lease
from tests.unit.test_shm_regions import _answer, request

OWNER, OTHER = "0123456789abcdef", "fedcba9876543210"


async def test_register_checks_the_request_before_touching_a_gpu() -> None:
    cuda = HostCuda(count=2)
    regions = regions_with(cuda)
    handle, _ = cuda.export(64)
    for args, expected in [
            ((b"\1" * 10, 0, 64), "raw_handle must be the 64 bytes of a cudaIpcMemHandle_t; "
                                  "got 10"),
            ((handle, -1, 64), "device_id must be 0 or more; got -1"),
            ((handle, 0, 0), "byte_size must be more than 0; got 0"),
            ((handle, 2, 64), "device_id 2 is not a GPU this runtime sees: it sees 2 (0 to 1)"),
            ((b"\7" * 64, 0, 64), "the handle cannot be opened on GPU 0"),
            ((handle, 0, 65), "byte_size 65 runs past the end of the GPU buffer the handle "
                              "names (64 bytes)")]:
        with pytest.raises(TensorgateError, match=expected.replace("(", r"\(").replace(
                ")", r"\)")) as caught:
            await regions.cuda.register(f"{OWNER}/g", *args)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "'g'" in caught.value.message and OWNER not in caught.value.message
    assert not regions.cuda.table and not regions.cuda.opening
    assert cuda.closed == [cuda.buffers[handle].ctypes.data]  # the one opened, closed again


async def test_without_a_gpu_or_a_cuda_library_register_says_which() -> None:
    handle = os.urandom(64)
    with pytest.raises(TensorgateError, match=NO_GPU) as caught:
        await regions_with(HostCuda(), devices=0).cuda.register(f"{OWNER}/g", handle, 0, 64)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(TensorgateError, match="install the gpu extra") as missing:
        await regions_with(None).cuda.register(f"{OWNER}/g", handle, 0, 64)
    assert missing.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert not regions_with(None).cuda.available() and regions_with(HostCuda()).cuda.available()


async def test_names_are_shared_with_system_regions_and_handles_stay_with_their_owner() -> None:
    cuda = HostCuda()
    regions = regions_with(cuda)
    handle, _ = cuda.export(64)
    await regions.cuda.register(f"{OWNER}/g", handle, 0, 64)
    with pytest.raises(TensorgateError, match="already registered") as twice:
        await regions.cuda.register(f"{OWNER}/g", cuda.export(8)[0], 0, 8)
    assert twice.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(TensorgateError, match="already registered") as system:
        regions.register(f"{OWNER}/g", "/anything", 0, 8)
    assert system.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(TensorgateError, match="registered by another caller") as theirs:
        await regions.cuda.register(f"{OTHER}/h", handle, 0, 64)
    assert theirs.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(TensorgateError, match="registered already, as CUDA shared memory "
                                              "region 'g'"):
        await regions.cuda.register(f"{OWNER}/h", handle, 0, 64)
    regions.cuda.limit = 1
    with pytest.raises(TensorgateError, match="holds 1 CUDA regions") as full:
        await regions.cuda.register(f"{OWNER}/k", cuda.export(8)[0], 0, 8)
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    regions.close()
    assert cuda.closed == [cuda.buffers[handle].ctypes.data]


async def test_inputs_are_copied_out_once_and_outputs_copied_in() -> None:
    cuda = HostCuda()
    regions = regions_with(cuda)
    handle, device = cuda.export(256)
    await regions.cuda.register(f"{OWNER}/g", handle, 0, 256)
    device[32:48] = np.frombuffer(np.arange(4, dtype=np.float32).tobytes(), np.uint8)
    lease = Lease(regions, decode_infer(request(
        [None, (f"{OWNER}/g", 32, 16)], [(f"{OWNER}/g", 128, 16)], raw=1).SerializeToString()))
    await lease.fetch(on_device=False)
    # Copied, not spans; the output's region is also there for the executor to write into.
    assert not any(isinstance(part, DeviceSpan) for part in lease.call.raw)
    places = lease.call.places
    assert lease.call.device and places is not None and list(places) == ["Y0"]
    assert (places["Y0"].pointer, places["Y0"].size) == (device.ctypes.data + 128, 16)
    raw = lease.call.raw
    assert bytes(raw[0]) == b"\0" * 16  # type: ignore[arg-type]
    assert np.frombuffer(raw[1], np.float32).tolist() == [0, 1, 2, 3]  # type: ignore[arg-type]
    device[32:36] = 9  # NOTE: a copy on the host: the batch never reads device memory itself
    assert np.frombuffer(raw[1], np.float32)[0] == 0  # type: ignore[arg-type]
    answer = _answer()
    await lease.write(answer)
    assert np.frombuffer(device[128:144].tobytes(), np.float32).tolist() == [2, 2, 2, 2]
    assert list(answer.raw_output_contents) == [b"", b"zzzz"]
    small = Lease(regions, decode_infer(request([], [(f"{OWNER}/g", 0, 8)]).SerializeToString()))
    with pytest.raises(TensorgateError, match=r"output 'Y0' takes 16 bytes; CUDA shared memory "
                                              r"region 'g' gives it 8"):
        await small.write(_answer())
    with pytest.raises(TensorgateError, match=r"input 'X0': offset 250 \+ byte_size 16 is "
                                              r"outside CUDA shared memory region 'g' \(256"):
        Lease(regions, decode_infer(request([(f"{OWNER}/g", 250, 16)], []).SerializeToString()))
    lease.release()
    small.release()
    assert regions.cuda.table[f"{OWNER}/g"].users == 0


async def test_for_a_backend_on_the_gpu_inputs_stay_in_the_region_as_spans() -> None:
    cuda = HostCuda()
    regions = regions_with(cuda)
    handle, device = cuda.export(256)
    await regions.cuda.register(f"{OWNER}/g", handle, 0, 256)
    copies: list[int] = []
    plain = cuda.copy

    def counted(target: int, source: int, size: int, device: int) -> None:
        copies.append(size)
        plain(target, source, size, device)

    cuda.copy = counted  # type: ignore[method-assign]
    message = request([(f"{OWNER}/g", 32, 16), (f"{OWNER}/g", 64, 8)], [])
    message.inputs[1].datatype, message.inputs[1].shape[:] = "BYTES", [1]
    device[64:72] = np.frombuffer(b"\4\0\0\0text", np.uint8)
    lease = Lease(regions, decode_infer(message.SerializeToString()))
    await lease.fetch(on_device=True)
    spans = lease.call.raw
    assert lease.call.device and isinstance(spans[0], DeviceSpan)
    assert (spans[0].pointer, spans[0].size, len(spans[0])) == (device.ctypes.data + 32, 16, 16)
    # Text is read on the host: only the BYTES input was copied.
    assert copies == [8] and bytes(spans[1]) == b"\4\0\0\0text"  # type: ignore[arg-type]
    device[32:48] = 7  # NOTE: no copy: the batch's gather reads the region itself
    host = np.empty(16, np.uint8)
    spans[0].into(host)
    assert host.tolist() == [7] * 16 and copies == [8, 16]
    lease.release()


async def test_a_failed_copy_names_the_tensor_and_the_region() -> None:
    cuda = HostCuda()
    regions = regions_with(cuda)
    handle, _ = cuda.export(64)
    await regions.cuda.register(f"{OWNER}/g", handle, 0, 64)

    def broken(target: int, source: int, size: int, device: int) -> None:
        raise CudaError("cudaMemcpyAsync: cudaErrorIllegalAddress")

    cuda.copy = broken  # type: ignore[method-assign]
    lease = Lease(regions, decode_infer(request([(f"{OWNER}/g", 0, 16)], [])
                                        .SerializeToString()))
    with pytest.raises(TensorgateError, match="input 'X0': reading CUDA shared memory region "
                                              "'g' failed: cudaMemcpyAsync") as caught:
        await lease.fetch(on_device=False)
    assert caught.value.code == grpc.StatusCode.INTERNAL
    lease.release()


async def test_unregister_closes_the_handle_once_its_requests_are_done() -> None:
    cuda = HostCuda()
    regions = regions_with(cuda)
    handle, device = cuda.export(64)
    await regions.cuda.register(f"{OWNER}/g", handle, 0, 64)
    lease = Lease(regions, decode_infer(request([(f"{OWNER}/g", 0, 16)], [])
                                        .SerializeToString()))
    waiting = asyncio.ensure_future(regions.cuda.unregister(f"{OWNER}/", wait_s=60))
    await asyncio.sleep(0)
    assert not waiting.done() and not regions.cuda.table and not cuda.closed
    lease.release()
    await asyncio.wait_for(waiting, 30)
    assert cuda.closed == [device.ctypes.data]
    with pytest.raises(TensorgateError, match="no CUDA shared memory region 'g'") as gone:
        await regions.cuda.unregister(f"{OWNER}/g")
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


async def test_the_rpcs_answer_triton_s_shapes() -> None:
    cuda = HostCuda()
    regions = regions_with(cuda)
    methods = shared_memory_methods(regions)
    decode, register = methods["CudaSharedMemoryRegister"]
    handle, _ = cuda.export(64)
    asked = pb.CudaSharedMemoryRegisterRequest(name=f"{OWNER}/g", raw_handle=handle,
                                               device_id=0, byte_size=64)
    await register(decode(asked.SerializeToString()), None)
    status = await methods["CudaSharedMemoryStatus"][1](
        pb.CudaSharedMemoryStatusRequest(name=f"{OWNER}/"), None)
    assert isinstance(status, pb.CudaSharedMemoryStatusResponse)
    assert [(s.name, s.device_id, s.byte_size) for s in status.regions.values()] == [
        (f"{OWNER}/g", 0, 64)]
    await methods["CudaSharedMemoryUnregister"][1](
        pb.CudaSharedMemoryUnregisterRequest(name=f"{OWNER}/g"), None)
    empty = await methods["CudaSharedMemoryStatus"][1](pb.CudaSharedMemoryStatusRequest(), None)
    assert not empty.regions  # type: ignore[attr-defined]


def test_the_real_cuda_runtime_loads_and_sees_the_drivers_gpus() -> None:
    """The library found loads and sees the GPUs the driver does (a handle cannot be opened by
    the process that exported it: the round trip is in tests/integration)."""
    from runtime.backends.base import cuda_device_count

    if cuda_device_count() == 0:
        pytest.skip("needs a CUDA GPU: none is visible")
    api = cuda_api.load()
    if api is None:
        pytest.skip("needs cuda-python or libcudart: neither is installed")
    assert api.device_count() == cuda_device_count()


def _library() -> cuda_api.CudaApi | None:
    """libcudart through ctypes, where it is installed."""
    for path in cuda_api._library_paths():
        try:
            return cuda_api._Library(ctypes.CDLL(path))
        except OSError:
            continue
    return None


def _bindings() -> cuda_api.CudaApi | None:
    """cuda-python's runtime module, where it is installed."""
    try:
        return cuda_api._Bindings(importlib.import_module("cuda.bindings.runtime"))
    except ImportError:
        return None


@pytest.mark.parametrize("make", [_library, _bindings], ids=["libcudart", "cuda-python"])
def test_each_cuda_runtime_answers_errors_by_name(make: Callable[[], Any]) -> None:
    """Each call's signature as declared (the handle passed by value among them): where no GPU
    is visible every call fails, by its CUDA error's name, and nothing crashes."""
    from runtime.backends.base import cuda_device_count

    if cuda_device_count() > 0:
        pytest.skip("a GPU is visible: the calls would succeed (the GPU tests cover them)")
    api = make()
    if api is None:
        pytest.skip(f"{(make.__doc__ or '').split(',')[0]} is not installed here")
    for call in (api.device_count, lambda: api.open(b"\x80" * 64, 0),
                 lambda: api.copy(0, 0, 16, 0), lambda: api.close(0, 0)):
        with pytest.raises(CudaError, match=r"^cuda\w+: cudaError\w+$"):
            call()
