"""What the control plane's route modules share: the `Control` each handler reads its pipeline
from, the request's checked headers, and JSON answers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from common.errors import TensorgateError
from common.policy import Principal
from gateway.admin_api import AdminApi
from gateway.edge import EdgeBuilder
from gateway.http_body import Body
from gateway.pipeline import Headers, Pipeline


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
