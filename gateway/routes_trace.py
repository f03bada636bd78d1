"""HTTP routes of the trace and logging extensions: `/v2/trace/setting`, its per-model form and
`/v2/logging`; an admin key reads and changes them (they are operator settings).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from common.errors import invalid_argument
from common.names import shown
from gateway import trace_log, trace_share
from gateway.routes.base import control_of, headers_of
from gateway.routes.schemas import ERRORS

router: APIRouter = APIRouter(tags=["trace and logging"], responses=ERRORS)


def _json(payload: Any) -> Response:
    return Response(orjson.dumps(payload), 200, media_type="application/json")


class TraceBody(BaseModel):
    """Trace settings to change, by Triton's names; null clears one (a model's back to the global
    value). trace_file, TENSORS and log_frequency other than "0" are refused by name."""

    model_config = ConfigDict(extra="forbid")
    trace_level: list[StrictStr] | StrictStr | None = None
    trace_rate: StrictStr | StrictInt | None = None
    trace_count: StrictStr | StrictInt | None = None
    log_frequency: StrictStr | StrictInt | None = None
    trace_file: StrictStr | None = None
    trace_mode: StrictStr | None = None


class LogBody(BaseModel):
    """Log settings to change; together they must make a threshold (log_info on needs
    log_warning on, and so on). A log file or another line format are refused by name."""

    model_config = ConfigDict(extra="forbid")
    log_file: StrictStr | None = None
    log_info: StrictBool | None = None
    log_warning: StrictBool | None = None
    log_error: StrictBool | None = None
    log_verbose_level: StrictInt | None = None
    log_format: StrictStr | None = None


def _documented(body: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": body.model_json_schema()}}}}


async def _changes(request: Request, body: type[BaseModel]) -> dict[str, Any]:
    """The POSTed settings, read only once the caller was admitted: those it names, null kept."""
    raw = await control_of(request).body(request)
    try:
        settings = body.model_validate_json(raw)
    except ValidationError as exc:
        # NOTE: a location may be a caller's key (an unknown setting): quoted and cut short.
        problems = "; ".join(f"{shown('.'.join(str(p) for p in e['loc']) or 'body')}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise invalid_argument(f"invalid settings: {problems}") from None
    return {name: getattr(settings, name) for name in settings.model_fields_set}


@router.get("/v2/trace/setting", summary="The global trace settings")
async def get_trace(request: Request) -> Response:
    control_of(request).admit(request, admin=True)
    return _json(trace_log.TRACE.shown())


@router.post("/v2/trace/setting", summary="Change the global trace settings",
             openapi_extra=_documented(TraceBody))
async def post_trace(request: Request) -> Response:
    principal = control_of(request).admit(request, admin=True)
    changes = await _changes(request, TraceBody)
    return _json(await trace_share.change_trace(changes, None, principal))


@router.get("/v2/models/{model}/trace/setting", summary="A served model's trace settings")
async def get_model_trace(request: Request, model: str) -> Response:
    control = control_of(request)
    control.admit(request, admin=True)
    await trace_share.check_served(control.pipeline, model, headers_of(request))
    return _json(trace_log.TRACE.shown(model))


@router.post("/v2/models/{model}/trace/setting", summary="Change a served model's trace settings",
             openapi_extra=_documented(TraceBody))
async def post_model_trace(request: Request, model: str) -> Response:
    control = control_of(request)
    principal = control.admit(request, admin=True)
    await trace_share.check_served(control.pipeline, model, headers_of(request))
    changes = await _changes(request, TraceBody)
    return _json(await trace_share.change_trace(changes, model, principal))


@router.get("/v2/logging", summary="The log settings")
async def get_logging(request: Request) -> Response:
    control_of(request).admit(request, admin=True)
    return _json(trace_log.log_settings())


@router.post("/v2/logging", summary="Change the log settings", openapi_extra=_documented(LogBody))
async def post_logging(request: Request) -> Response:
    principal = control_of(request).admit(request, admin=True)
    changes = await _changes(request, LogBody)
    return _json(await trace_share.change_log(changes, principal))
