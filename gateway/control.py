"""The HTTP control plane: every path but infer, declared once as FastAPI routes.

Validation, 405 with `Allow` and the OpenAPI document follow from the declarations; the infer fast
path stays on the bare ASGI transport, which hands every other path to this app.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from common.errors import TensorgateError
from common.names import shown
from gateway import openapi, routes_trace, routes_v1
from gateway.routes import admin, models, oip, shm
from gateway.routes.base import Control, error_response, json_response

__all__ = ["Control", "build_control", "routers"]

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


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
    """The route groups, in the order they are matched; each is an APIRouter in its own module."""
    return [oip.router, models.router, admin.router, openapi.router, routes_v1.router,
            routes_trace.router, shm.router]


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
