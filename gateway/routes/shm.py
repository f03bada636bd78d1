"""Triton's shared-memory extensions over HTTP: `/v2/systemsharedmemory/...` and
`/v2/cudasharedmemory/...` (status, register, unregister), each caller seeing only its regions."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from common.errors import invalid_argument
from common.names import check_name
from common.proto import grpc_service_pb2 as pb
from gateway.routes.base import control_of, headers_of, json_response
from gateway.routes.schemas import ERRORS, body_doc, parse_body
from gateway.shm import Kind

router: APIRouter = APIRouter(responses=ERRORS)
_PREFIX: dict[Kind, str] = {"System": "/v2/systemsharedmemory", "Cuda": "/v2/cudasharedmemory"}
_WHAT = "shared memory region name"


class SystemRegister(BaseModel):
    key: str = Field(description="the POSIX shared memory object: '/' and its name")
    offset: int = Field(default=0, ge=0, le=2**63 - 1)
    byte_size: int = Field(gt=0, le=2**63 - 1)


class RawHandle(BaseModel):
    b64: str = Field(description="the cudaIpcMemHandle_t, base64-encoded")


class CudaRegister(BaseModel):
    raw_handle: RawHandle
    device_id: int = Field(default=0, ge=0, le=2**31 - 1)
    byte_size: int = Field(gt=0, le=2**63 - 1)


class SystemRegion(BaseModel):
    name: str
    key: str
    offset: int
    byte_size: int


class CudaRegion(BaseModel):
    name: str
    device_id: int
    byte_size: int


def _status_json(answer: Any) -> list[dict[str, Any]]:
    fields = [f.name for f in answer.DESCRIPTOR.nested_types_by_name["RegionStatus"].fields]
    return [{field: getattr(status, field) for field in fields}
            for _, status in sorted(answer.regions.items())]


def _declare(kind: Kind) -> None:
    prefix, shown = _PREFIX[kind], "system" if kind == "System" else "CUDA"
    region = prefix + "/region/{region_name}"
    listed = list[SystemRegion] if kind == "System" else list[CudaRegion]
    body = SystemRegister if kind == "System" else CudaRegister

    async def status_all(request: Request) -> Response:
        return await status(request, "")

    async def status(request: Request, region_name: str) -> Response:
        name = check_name(region_name, _WHAT) if region_name else ""
        answer = await control_of(request).pipeline.shared_memory.status(
            kind, name, headers_of(request))
        return json_response(_status_json(answer))

    async def register(request: Request, region_name: str) -> Response:
        name = check_name(region_name, _WHAT)
        control = control_of(request)
        control.admit(request)  # NOTE: before reading the body
        params = parse_body(body, await control.body(request), f"{shown} shared memory register")
        message = _register_message(kind, name, params)
        await control.pipeline.shared_memory.register(kind, message, headers_of(request))
        return json_response({})

    async def unregister_all(request: Request) -> Response:
        return await unregister(request, "")

    async def unregister(request: Request, region_name: str) -> Response:
        name = check_name(region_name, _WHAT) if region_name else ""
        await control_of(request).pipeline.shared_memory.unregister(kind, name,
                                                                    headers_of(request))
        return json_response({})

    for path, endpoint, summary in (
            (prefix + "/status", status_all, f"every {shown} shared memory region of yours"),
            (region + "/status", status, f"one {shown} shared memory region of yours")):
        router.add_api_route(path, endpoint, methods=["GET"], summary=summary,
                             responses={200: {"model": listed}})
    router.add_api_route(region + "/register", register, methods=["POST"],
                         summary=f"register a {shown} shared memory region",
                         openapi_extra=body_doc(body, required=True))
    for path, endpoint, summary in (
            (prefix + "/unregister", unregister_all, f"unregister all your {shown} regions"),
            (region + "/unregister", unregister, f"unregister one {shown} region")):
        router.add_api_route(path, endpoint, methods=["POST"], summary=summary)


def _register_message(kind: Kind, name: str, params: Any) -> Any:
    if kind == "System":
        return pb.SystemSharedMemoryRegisterRequest(name=name, key=params.key,
                                                    offset=params.offset,
                                                    byte_size=params.byte_size)
    try:
        handle = base64.b64decode(params.raw_handle.b64, validate=True)
    except binascii.Error:
        raise invalid_argument("raw_handle.b64: not valid base64") from None
    return pb.CudaSharedMemoryRegisterRequest(name=name, raw_handle=handle,
                                              device_id=params.device_id,
                                              byte_size=params.byte_size)


_declare("System")
_declare("Cuda")
