"""The shared-memory RPCs of a runtime worker: SystemSharedMemory{Status,Register,Unregister}
and CudaSharedMemory{Status,Register,Unregister}."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from common.proto import grpc_service_pb2 as pb
from runtime.backends.base import cuda_device_count
from runtime.cuda_shm import NO_GPU, CudaRegions
from runtime.shm import Regions

__all__ = ["NO_GPU", "gpu_visible", "shared_memory_methods"]
Handler = Callable[[Any, float | None], Awaitable[Message]]


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
        **cuda_methods(regions.cuda),
    }


def gpu_visible() -> bool:
    """Whether the NVIDIA driver shows this process a GPU (CUDA shared memory's first need)."""
    return cuda_device_count() > 0


def cuda_methods(regions: CudaRegions) -> dict[str, tuple[Callable[[Any], Any], Handler]]:
    """CudaSharedMemory{Status,Register,Unregister}."""

    async def status(request: Any, timeout: float | None) -> Message:
        answer = pb.CudaSharedMemoryStatusResponse()
        for region in regions.select(request.name):
            answer.regions[region.name].CopyFrom(
                pb.CudaSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, device_id=region.device_id, byte_size=region.byte_size))
        return answer

    async def register(request: Any, timeout: float | None) -> Message:
        await regions.register(request.name, request.raw_handle, request.device_id,
                               request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    async def unregister(request: Any, timeout: float | None) -> Message:
        await regions.unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    return {
        "CudaSharedMemoryStatus": (pb.CudaSharedMemoryStatusRequest.FromString, status),
        "CudaSharedMemoryRegister": (pb.CudaSharedMemoryRegisterRequest.FromString, register),
        "CudaSharedMemoryUnregister": (pb.CudaSharedMemoryUnregisterRequest.FromString,
                                       unregister),
    }
