"""The admin API's routes: versions, aliases, traffic, keys and the audit log (admin keys only).

Each admits an admin on the headers, checks the path's names, then reads and validates the body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from common.names import check_name, check_version
from gateway.admin_api import AdminApi, Call, KeyBody, PromoteBody, RollbackBody, TrafficBody
from gateway.routes import schemas as s
from gateway.routes.base import control_of, json_response
from gateway.routes.schemas import ERRORS, body_doc, parse_body

router: APIRouter = APIRouter(prefix="/v2/admin", responses=ERRORS)
Operation = Callable[[AdminApi, Call], Awaitable[dict[str, Any]]]
_BODY_NAMES = {PromoteBody: "promote", RollbackBody: "rollback", TrafficBody: "traffic",
               KeyBody: "key"}


async def _call(request: Request, operation: Operation, status: int = 200,
                body: type[BaseModel] | None = None, **query: str | None) -> Response:
    """Admit an admin, check the path's names, read the body, run the operation."""
    control = control_of(request)
    principal = control.admit(request, admin=True)  # NOTE: before reading the body
    params = dict(request.path_params)
    for key, value in params.items():
        if key == "version":
            check_version(value)
        else:
            check_name(value, "key name" if key == "name" else "model name")
    document = None
    if body is not None:
        document = parse_body(body, await control.body(request), _BODY_NAMES[body])
    given = {k: v for k, v in query.items() if v is not None}
    call = Call(principal.subject, params, given, document)
    return json_response(await operation(control.admin_api, call), status)


@router.get("/models", summary="every model's versions and aliases",
            responses={200: {"model": s.Models}})
async def models(request: Request) -> Response:
    return await _call(request, AdminApi.models)


@router.get("/models/{model}", summary="a model: versions, signatures, aliases, traffic share, "
            "history", responses={200: {"model": s.ModelDetail}})
async def describe(request: Request, model: str) -> Response:
    return await _call(request, AdminApi.describe)


@router.post("/models/{model}/versions/{version}/promote",
             summary="point an alias (production by default) at a ready version",
             responses={200: {"model": s.Promoted}}, openapi_extra=body_doc(PromoteBody))
async def promote(request: Request, model: str, version: str) -> Response:
    return await _call(request, AdminApi.promote, body=PromoteBody)


@router.post("/models/{model}/rollback", summary="point an alias back at its previous ready "
             "version", responses={200: {"model": s.RolledBack}},
             openapi_extra=body_doc(RollbackBody))
async def rollback(request: Request, model: str) -> Response:
    return await _call(request, AdminApi.rollback, body=RollbackBody)


@router.delete("/models/{model}/versions/{version}",
               summary="retire a version (refused while it holds traffic unless force=true)",
               responses={200: {"model": s.Version}})
async def retire(request: Request, model: str, version: str, force: str | None = Query(
        None, description="retire even while the version holds traffic (true or false)")
                 ) -> Response:
    return await _call(request, AdminApi.retire, force=force)


@router.get("/models/{model}/traffic", summary="the model's traffic policy",
            responses={200: {"model": s.TrafficPolicy}})
async def traffic(request: Request, model: str) -> Response:
    return await _call(request, AdminApi.traffic)


@router.put("/models/{model}/traffic", summary="set the model's weights, stickiness and shadow",
            responses={200: {"model": s.TrafficPolicy}},
            openapi_extra=body_doc(TrafficBody, required=True))
async def set_traffic(request: Request, model: str) -> Response:
    return await _call(request, AdminApi.set_traffic, body=TrafficBody)


@router.delete("/models/{model}/traffic", summary="remove the model's traffic policy "
               "(returns it)", responses={200: {"model": s.TrafficPolicy}})
async def clear_traffic(request: Request, model: str) -> Response:
    return await _call(request, AdminApi.clear_traffic)


@router.get("/keys", summary="the API keys (never their secrets)",
            responses={200: {"model": s.Keys}})
async def keys(request: Request, all_: str | None = Query(
        None, alias="all", description="include revoked keys (true or false)")) -> Response:
    return await _call(request, AdminApi.keys, all=all_)


@router.post("/keys", summary="create a key; its secret is in this answer only", status_code=201,
             responses={201: {"model": s.CreatedKey}},
             openapi_extra=body_doc(KeyBody, required=True))
async def create_key(request: Request) -> Response:
    return await _call(request, AdminApi.create_key, 201, body=KeyBody)


@router.delete("/keys/{name}", summary="revoke a key for good", responses={200: {"model": s.Key}})
async def revoke_key(request: Request, name: str) -> Response:
    return await _call(request, AdminApi.revoke_key)


@router.get("/audit", summary="the audit log, newest first", responses={200: {"model": s.AuditLog}})
async def audit(request: Request, model: str | None = Query(
        None, description="only this model's entries"), limit: str | None = Query(
        None, description="how many of the newest entries, 1 to 1000 (100)")) -> Response:
    return await _call(request, AdminApi.audit, model=model, limit=limit)
