"""The HTTP control plane: every path but infer, declared once as FastAPI routes.

Validation, 405 with `Allow` and the OpenAPI document follow from the declarations; the infer fast
path stays on the bare ASGI transport, which hands every other path to this app.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from common.errors import TensorgateError
from common.names import shown
from common.policy import Principal
from gateway.admin_api import AdminApi
from gateway.edge import EdgeBuilder
from gateway.http_body import Body
from gateway.pipeline import Headers, Pipeline

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


@dataclass
class Control:
    """What the control plane's handlers share; `request.app.state.control`."""

    pipeline: Pipeline
    admin_api: AdminApi
    edge: EdgeBuilder | None
    max_body: int

    def admit(self, request: Request, model: str | None = None,
              admin: bool = False) -> Principal:
        """Authenticate on the headers alone; call it before reading the body."""
        return self.pipeline.admit(headers_of(request), model, admin=admin)

    async def body(self, request: Request) -> bytes:
        """The whole body, within the size limit, inflated if it came compressed."""
        return await Body(request.receive, dict(headers_of(request)), self.max_body).read()


def control_of(request: Request) -> Control:
    control: Control = request.app.state.control
    return control


def headers_of(request: Request) -> Headers:
    """The request's headers by lower-case name, as the transport checked them."""
    headers: Headers = request.scope["tensorgate.headers"]
    return headers


def json_response(payload: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status, headers, media_type="application/json")


def error_response(exc: TensorgateError) -> Response:
    headers = {}
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    return json_response({"error": exc.message}, exc.http_status, headers)


async def _tensorgate_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, TensorgateError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no such path: {request.method} {shown(request.url.path, 200)[1:-1]}"
    elif exc.status_code == 405:
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        headers["Allow"] = (exc.headers or {}).get("allow") or _allowed(request)
        detail = (f"{request.method} {request.url.path}: method not allowed; this path takes "
                  f"{headers['Allow']}")
    return json_response({"error": detail}, exc.status_code, headers)


def _allowed(request: Request) -> str:
    """Every method some route takes on this path: Starlette names only the first route's, and
    a path's methods are often declared as separate routes."""
    routes = request.app.router.routes
    return ", ".join(method for method in _METHODS if any(
        route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes))


async def _invalid(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                         for e in exc.errors()[:5])
    return json_response({"error": f"invalid request: {problems}"}, 400)


def routers() -> list[APIRouter]:
    """The route groups, in the order they are matched; each is an APIRouter in its own module.
    Imported here, not at the top: the route modules use this module's helpers."""
    from gateway import openapi, routes_trace, routes_v1
    from gateway.routes import admin, models, oip

    return [oip.router, models.router, admin.router, openapi.router, routes_v1.router,
            routes_trace.router]


def build_control(control: Control, groups: list[APIRouter] | None = None) -> FastAPI:
    """The control-plane app over `groups` (default: every group, `routers()`)."""
    app = FastAPI(title="tensorgate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.control = control
    handlers: dict[Any, Any] = {TensorgateError: _tensorgate_error, HTTPException: _http_error,
                                RequestValidationError: _invalid}
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
    for router in routers() if groups is None else groups:
        app.include_router(router)
    app.state.openapi = None
    return app
