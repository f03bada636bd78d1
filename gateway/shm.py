"""Triton's shared-memory extensions at the gateway: each caller's regions scoped by its owner id,
registrations made on every runtime worker (which maps them), and infer requests' region names
rewritten to the scoped ones. No tensor byte passes through here."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import grpc

from common import EXTENSIONS, regions
from common.errors import TensorgateError, unavailable
from common.proto import grpc_service_pb2 as pb
from common.wire import LENGTH_DELIMITED, WireError, fields
from gateway.context import Headers
from gateway.request_parts import Parts, Request

Kind = Literal["System", "Cuda"]
#: Server Metadata's name for CUDA shared memory, listed where every worker offers it.
CUDA_EXTENSION = "cuda_shared_memory"
#: Requests this large are looked at field by field: the tensors' bytes are not searched.
SCAN_FROM_BYTES = 64 * 1024
_RAW_INPUT_CONTENTS = 7


def mentions(request: Request) -> bool:
    """Whether the request may name a region (a false positive only costs a parse)."""
    if isinstance(request, Parts):
        return regions.MARK in request.head
    if len(request) < SCAN_FROM_BYTES:
        return regions.MARK in request
    view = memoryview(request)
    try:
        return any(regions.MARK in view[value:end].tobytes()
                   for number, wire, _, value, end in fields(view)
                   if wire == LENGTH_DELIMITED and number != _RAW_INPUT_CONTENTS)
    except WireError:
        return False  # NOTE: the runtime refuses the malformed request, naming the fault


def scope_request(request: Request, subject: str) -> Request:
    """The request with each region name it uses scoped by the caller's owner id (in its head
    alone when its tensors are kept apart)."""
    message = pb.ModelInferRequest.FromString(
        request.head if isinstance(request, Parts) else request)
    owner = regions.owner_of(subject)
    changed = False
    for tensor in (*message.inputs, *message.outputs):
        if regions.REGION in tensor.parameters:
            value = tensor.parameters[regions.REGION]
            if value.WhichOneof("parameter_choice") == "string_param":
                value.string_param = regions.scoped(owner, value.string_param)
                changed = True
    if not changed:
        return request
    if isinstance(request, Parts):
        return Parts(message.SerializeToString(), request.tensors)
    return message.SerializeToString()


class SharedMemory:
    """Status, register and unregister for one caller: its regions only, by its own names."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        #: Whether each worker (by address) offers CUDA shared memory: asked once.
        self.cuda: dict[str, bool] = {}

    async def extensions(self) -> tuple[str, ...]:
        """Server Metadata's extensions: CUDA shared memory too where every admitted worker
        lists it (a worker sees a GPU and can load the CUDA runtime)."""
        endpoints = [e for e in self.pipeline.router.endpoints if e.admitted]
        unknown = [e for e in endpoints if e.address not in self.cuda]
        answers = await asyncio.gather(
            *(e.upstream.call("ServerMetadata", b"", self.pipeline.default_timeout)
              for e in unknown), return_exceptions=True)
        for endpoint, answer in zip(unknown, answers):
            if not isinstance(answer, BaseException):
                found = pb.ServerMetadataResponse.FromString(answer).extensions
                self.cuda[endpoint.address] = CUDA_EXTENSION in found
        if endpoints and all(self.cuda.get(e.address) for e in endpoints):
            return (*EXTENSIONS, CUDA_EXTENSION)
        return EXTENSIONS

    def owner(self, headers: Headers) -> str:
        """Any caller with a valid credential may keep regions; they are its own."""
        return regions.owner_of(self.pipeline.admit(headers, None).subject)

    async def status(self, kind: Kind, name: str, headers: Headers) -> Any:
        owner = self.owner(headers)
        wanted = regions.scoped(owner, name) if name else f"{owner}/"
        request = getattr(pb, f"{kind}SharedMemoryStatusRequest")(name=wanted)
        pipeline = self.pipeline
        answer = await pipeline.forward(pipeline.router.pool(), "", f"{kind}SharedMemoryStatus",
                                        request.SerializeToString(), pipeline.default_timeout)
        found = getattr(pb, f"{kind}SharedMemoryStatusResponse").FromString(answer)
        shown = type(found)()
        for scoped_name, status in found.regions.items():
            if scoped_name.startswith(f"{owner}/"):
                entry = shown.regions[regions.unscoped(scoped_name)]
                entry.CopyFrom(status)
                entry.name = regions.unscoped(scoped_name)
        return shown

    async def register(self, kind: Kind, request: Any, headers: Headers) -> None:
        """Registered on every admitted worker, or on none: a failure undoes the others."""
        owner = self.owner(headers)
        name = regions.scoped(owner, request.name)
        if kind == "System":
            regions.check_key(request.key)
        request.name = name
        endpoints, answers = await self._everywhere(f"{kind}SharedMemoryRegister",
                                                    request.SerializeToString())
        failures = [a for a in answers if isinstance(a, BaseException)]
        if not failures:
            return
        done = [e for e, a in zip(endpoints, answers) if not isinstance(a, BaseException)]
        undo = getattr(pb, f"{kind}SharedMemoryUnregisterRequest")(name=name).SerializeToString()
        await asyncio.gather(*(e.upstream.call(f"{kind}SharedMemoryUnregister", undo,
                                               self.pipeline.default_timeout) for e in done),
                             return_exceptions=True)
        raise _first(failures)

    async def unregister(self, kind: Kind, name: str, headers: Headers) -> None:
        """One region by name, or all of the caller's ("")."""
        owner = self.owner(headers)
        wanted = regions.scoped(owner, name) if name else f"{owner}/"
        request = getattr(pb, f"{kind}SharedMemoryUnregisterRequest")(name=wanted)
        _, answers = await self._everywhere(f"{kind}SharedMemoryUnregister",
                                            request.SerializeToString())
        failures = [a for a in answers if isinstance(a, BaseException)]
        missing = [f for f in failures if isinstance(f, TensorgateError)
                   and f.code == grpc.StatusCode.NOT_FOUND]
        # NOTE: a worker started since the register lacks the region: gone there already.
        if len(missing) < len(failures) or (failures and len(missing) == len(answers)):
            raise _first([f for f in failures if f not in missing] or failures)

    async def _everywhere(self, method: str, request: bytes) -> tuple[list[Any], list[Any]]:
        endpoints = [e for e in self.pipeline.router.endpoints if e.admitted]
        if not endpoints:
            raise unavailable(f"{method}: no healthy runtime worker")
        answers = await asyncio.gather(
            *(e.upstream.call(method, request, self.pipeline.default_timeout)
              for e in endpoints), return_exceptions=True)
        return endpoints, answers


def _first(failures: list[BaseException]) -> TensorgateError:
    first = failures[0]
    return first if isinstance(first, TensorgateError) else unavailable(str(first))
