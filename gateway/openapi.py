"""The OpenAPI description of the gateway's HTTP API, generated from the control plane's route
declarations (gateway/routes) and served at /v2/openapi.json; a test runs schemathesis on it."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from common import __version__

#: The edge bundle targets (tensorgate.edge.source.TARGETS; a unit test keeps them equal).
EDGE_TARGETS = ("onnx", "onnx-fp16", "onnx-int8", "ort")
DESCRIPTION = ("The Open Inference Protocol (KServe v2) with Triton's extensions, the admin API "
               'and edge bundles. Errors are `{"error": "<message>"}`.')

router: APIRouter = APIRouter()


def build_document(app: FastAPI) -> dict[str, Any]:
    """The description of `app`'s routes: every failure is `{"error"}` (FastAPI's 422 schema is
    dropped: a bad request answers 400), bodies' schemas added, a bearer key by default."""
    from gateway.routes.schemas import BODY_SCHEMAS  # NOTE: the routes import this module

    document = get_openapi(title="tensorgate gateway", version=__version__,
                           description=DESCRIPTION, routes=app.routes)
    for path in document["paths"].values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(BODY_SCHEMAS)
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                "description": "an API key (tg_...) or a JWT"}}
    document["security"] = [{"bearer": []}]
    return document


@router.get("/v2/openapi.json", summary="this description", openapi_extra={"security": []},
            responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}})
async def openapi(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "openapi", None) is None:  # built on first request and kept
        state.openapi = orjson.dumps(build_document(request.app))
    return Response(state.openapi, media_type="application/json")
