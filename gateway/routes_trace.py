"""HTTP routes of the trace and logging extensions: `/v2/trace/setting`, its per-model form and
`/v2/logging`; an admin key reads and changes them (they are operator settings).

`gateway.control` imports this module to list its router, so its helpers are looked up per call.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from common.errors import invalid_argument
from gateway import control as plane
from gateway import trace_log, trace_share

router = APIRouter(tags=["trace and logging"])

_TRACE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "description": "The settings to change; null clears one (a model's back to "
    "the global value). trace_file, TENSORS, log_frequency other than '0' are refused.",
    "properties": {"trace_level": {"type": "array", "items": {"enum": ["OFF", "TIMESTAMPS"]}},
                   "trace_rate": {"type": "string"}, "trace_count": {"type": "string"},
                   "log_frequency": {"type": "string"}, "trace_file": {"type": "string"},
                   "trace_mode": {"enum": ["opentelemetry"]}}}}}}}
_LOG_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "description": "The settings to change; they must make a threshold.",
    "properties": {"log_info": {"type": "boolean"}, "log_warning": {"type": "boolean"},
                   "log_error": {"type": "boolean"}, "log_verbose_level": {"enum": [0, 1]},
                   "log_format": {"enum": ["default"]}, "log_file": {"enum": [""]}}}}}}}


async def _changes(request: Request) -> dict[str, Any]:
    """The POSTed settings: a JSON object, read only once the caller was admitted."""
    body = await plane.control_of(request).body(request)
    try:
        changes = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_argument(f"settings must be a JSON object: {exc}") from None
    if not isinstance(changes, dict):
        raise invalid_argument("settings must be a JSON object of the settings to change")
    return changes


@router.get("/v2/trace/setting", summary="The global trace settings")
async def get_trace(request: Request) -> Response:
    plane.control_of(request).admit(request, admin=True)
    return plane.json_response(trace_log.TRACE.shown())


@router.post("/v2/trace/setting", summary="Change the global trace settings",
             openapi_extra=_TRACE_BODY)
async def post_trace(request: Request) -> Response:
    principal = plane.control_of(request).admit(request, admin=True)
    return plane.json_response(await trace_share.change_trace(await _changes(request), None,
                                                            principal))


@router.get("/v2/models/{model}/trace/setting", summary="A served model's trace settings")
async def get_model_trace(request: Request, model: str) -> Response:
    control = plane.control_of(request)
    control.admit(request, admin=True)
    await trace_share.check_served(control.pipeline, model, plane.headers_of(request))
    return plane.json_response(trace_log.TRACE.shown(model))


@router.post("/v2/models/{model}/trace/setting", summary="Change a served model's trace settings",
             openapi_extra=_TRACE_BODY)
async def post_model_trace(request: Request, model: str) -> Response:
    control = plane.control_of(request)
    principal = control.admit(request, admin=True)
    await trace_share.check_served(control.pipeline, model, plane.headers_of(request))
    return plane.json_response(await trace_share.change_trace(await _changes(request), model,
                                                            principal))


@router.get("/v2/logging", summary="The log settings")
async def get_logging(request: Request) -> Response:
    plane.control_of(request).admit(request, admin=True)
    return plane.json_response(trace_log.log_settings())


@router.post("/v2/logging", summary="Change the log settings", openapi_extra=_LOG_BODY)
async def post_logging(request: Request) -> Response:
    principal = plane.control_of(request).admit(request, admin=True)
    return plane.json_response(await trace_share.change_log(await _changes(request), principal))
