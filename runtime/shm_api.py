"""The shared-memory RPCs of a runtime worker: SystemSharedMemory{Status,Register,Unregister},
and CudaSharedMemory*, which answer what a worker without CUDA shared memory can."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from common import regions as names
from common.errors import TensorgateError, not_found
from common.proto import grpc_service_pb2 as pb
from runtime.shm import Regions

Handler = Callable[[Any, float | None], Awaitable[Message]]
NO_GPU = "CUDA shared memory needs a GPU visible to the runtime; none is"
NOT_BUILT = ("CUDA shared memory is not implemented by this runtime yet; use system shared "
             "memory (/v2/systemsharedmemory)")


def shared_memory_methods(regions: Regions) -> dict[str, tuple[Callable[[Any], Any], Handler]]:
    """The core's table entries: name → (request decoder, handler)."""

    async def status(request: Any, timeout: float | None) -> Message:
        answer = pb.SystemSharedMemoryStatusResponse()
        for region in regions.select(request.name):
            answer.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, key=region.key, offset=region.offset,
                    byte_size=region.byte_size))
        return answer

    async def register(request: Any, timeout: float | None) -> Message:
        regions.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def unregister(request: Any, timeout: float | None) -> Message:
        await regions.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    return {
        "SystemSharedMemoryStatus": (pb.SystemSharedMemoryStatusRequest.FromString, status),
        "SystemSharedMemoryRegister": (pb.SystemSharedMemoryRegisterRequest.FromString,
                                       register),
        "SystemSharedMemoryUnregister": (pb.SystemSharedMemoryUnregisterRequest.FromString,
                                         unregister),
        "CudaSharedMemoryStatus": (pb.CudaSharedMemoryStatusRequest.FromString, cuda_status),
        "CudaSharedMemoryRegister": (pb.CudaSharedMemoryRegisterRequest.FromString,
                                     cuda_register),
        "CudaSharedMemoryUnregister": (pb.CudaSharedMemoryUnregisterRequest.FromString,
                                       cuda_unregister),
    }


def gpu_visible() -> bool:
    """Whether torch sees a CUDA GPU (False where torch is not installed)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch  # NOTE: here, not at the top: importing torch takes seconds

    return bool(torch.cuda.is_available())


async def cuda_status(request: Any, timeout: float | None) -> Message:
    """No CUDA region is ever registered here: every status is empty, a named one not found."""
    name = names.check_region(request.name)
    if name and not name.endswith("/"):
        raise not_found(f"no CUDA shared memory region '{names.unscoped(name)}' is registered")
    return pb.CudaSharedMemoryStatusResponse()


async def cuda_register(request: Any, timeout: float | None) -> Message:
    names.check_region(request.name)
    if not await asyncio.to_thread(gpu_visible):
        raise TensorgateError(grpc.StatusCode.FAILED_PRECONDITION, NO_GPU)
    raise TensorgateError(grpc.StatusCode.UNIMPLEMENTED, NOT_BUILT)


async def cuda_unregister(request: Any, timeout: float | None) -> Message:
    await cuda_status(request, timeout)
    return pb.CudaSharedMemoryUnregisterResponse()
