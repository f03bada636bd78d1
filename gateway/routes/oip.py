"""The Open Inference Protocol's control paths: server and model metadata, health, config,
statistics, the repository extension; and the infer path's declaration (the transport answers it).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from common import __version__
from common.errors import invalid_argument, not_found
from common.names import check_name, check_version
from common.proto import grpc_service_pb2 as pb
from common.uploads import check_upload
from gateway.http_codec import message_to_json
from gateway.pipeline import Access
from gateway.routes import schemas as s
from gateway.routes.base import control_of, headers_of, json_response
from gateway.routes.schemas import ERRORS, OPEN, body_doc, parse_body

router: APIRouter = APIRouter(responses=ERRORS)
MODEL = "/v2/models/{model_name}"
VERSION = "/v2/models/{model_name}/versions/{model_version}"
_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.get("/v2", summary="server metadata", responses={200: {"model": s.ServerMetadata}})
async def server_metadata(request: Request) -> Response:
    control = control_of(request)
    control.admit(request)
    extensions = await control.pipeline.shared_memory.extensions()
    return json_response({"name": "tensorgate", "version": __version__,
                          "extensions": list(extensions)})


@router.get("/v2/health/live", summary="the server is live", openapi_extra=OPEN,
            responses={200: {"model": s.Live}})
async def live() -> Response:
    return json_response({"live": True})


@router.get("/v2/health/ready", summary="a runtime worker is ready", openapi_extra=OPEN,
            responses={200: {"model": s.Ready}, 503: {"model": s.Ready}})
async def ready(request: Request) -> Response:
    ready = await control_of(request).pipeline.ready()
    return json_response({"ready": ready}, 200 if ready else 503)


@router.get("/v2/models/stats", summary="statistics of every model",
            responses={200: {"model": s.ModelStatistics}})
async def all_statistics(request: Request) -> Response:
    return await _statistics(request, "", "")


async def _ask(request: Request, method: str, message: Any, model: str, version: str,
               access: Access | None = None) -> bytes:
    """A question for a worker serving the model; the pipeline admits the caller first."""
    pipeline = control_of(request).pipeline
    if access is not None:
        return await pipeline.ask(method, message.SerializeToString(), model, version,
                                  access=access)
    return await pipeline.ask(method, message.SerializeToString(), model, version,
                              headers_of(request))


async def _statistics(request: Request, model: str, version: str) -> Response:
    answer = await _ask(request, "ModelStatistics",
                        pb.ModelStatisticsRequest(name=model, version=version), model, version)
    return json_response(message_to_json(pb.ModelStatisticsResponse.FromString(answer)))


async def _metadata(request: Request, model: str, version: str) -> Response:
    answer = await _ask(request, "ModelMetadata",
                        pb.ModelMetadataRequest(name=model, version=version), model, version)
    return json_response(message_to_json(pb.ModelMetadataResponse.FromString(answer)))


async def _ready(request: Request, model: str, version: str) -> Response:
    answer = await _ask(request, "ModelReady", pb.ModelReadyRequest(name=model, version=version),
                        model, version, access="open")
    ready = pb.ModelReadyResponse.FromString(answer).ready
    return json_response({"ready": ready}, 200 if ready else 400)


async def _config(request: Request, model: str, version: str) -> Response:
    answer = await _ask(request, "ModelConfig", pb.ModelConfigRequest(name=model, version=version),
                        model, version)
    return json_response(message_to_json(pb.ModelConfigResponse.FromString(answer).config))


_PER_MODEL: list[tuple[str, Any, str, dict[Any, Any], dict[str, Any] | None]] = [
    ("", _metadata, "model metadata", {200: {"model": s.ModelMetadata}}, None),
    ("/ready", _ready, "the model is ready", {200: {"model": s.Ready}, 400: {
        "model": s.Ready | s.ErrorBody, "description": "the model is not ready"}}, OPEN),
    ("/config", _config, "model configuration (Triton's ModelConfig as JSON)",
     {200: {"content": {"application/json": {"schema": {"type": "object"}}}}}, None),
    ("/stats", _statistics, "model statistics", {200: {"model": s.ModelStatistics}}, None),
]


def _latest(handler: Any) -> Any:
    async def latest(request: Request, model_name: str) -> Response:
        answer: Response = await handler(request, check_name(model_name), "")
        return answer
    return latest


def _versioned(handler: Any) -> Any:
    async def versioned(request: Request, model_name: str, model_version: str) -> Response:
        answer: Response = await handler(request, check_name(model_name),
                                         check_version(model_version))
        return answer
    return versioned


def _declare_per_model() -> None:
    """Each model path and its `/versions/{model_version}` twin, one handler for both."""
    for suffix, handler, summary, responses, extra in _PER_MODEL:
        for path, endpoint in ((MODEL + suffix, _latest(handler)),
                               (VERSION + suffix, _versioned(handler))):
            router.add_api_route(path, endpoint, methods=["GET"], summary=summary,
                                 responses=responses, openapi_extra=extra,
                                 operation_id="get" + path.replace("/", "_").replace("{", "")
                                 .replace("}", ""))


_declare_per_model()


# -- the infer path: answered by the transport, declared here for the document and for 405 ----

_INFER: dict[int | str, dict[str, Any]] = {200: {
    "model": s.InferenceResponse, "content": {"application/octet-stream": _BINARY},
    "description": "the outputs; binary tensor data after the JSON when the "
                   "response carries Inference-Header-Content-Length"}}


@router.post(MODEL + "/infer", summary="run an inference", responses=_INFER,
             openapi_extra=body_doc(s.InferenceRequest, required=True))
async def infer(model_name: str) -> Response:
    raise not_found("no such path")  # NOTE: the transport answers every POST to this path


@router.post(VERSION + "/infer", summary="run an inference on a version", responses=_INFER,
             openapi_extra=body_doc(s.InferenceRequest, required=True))
async def infer_version(model_name: str, model_version: str) -> Response:
    raise not_found("no such path")  # NOTE: the transport answers every POST to this path


# -- the repository extension ------------------------------------------------------------------

@router.post("/v2/repository/index", summary="the models in the repository (admin)",
             responses={200: {"model": list[s.RepositoryModel]}},
             openapi_extra=body_doc(s.RepositoryIndexRequest))
async def repository_index(request: Request) -> Response:
    control = control_of(request)
    control.admit(request, admin=True)  # NOTE: before reading the body
    params = parse_body(s.RepositoryIndexRequest, await control.body(request), "repository index")
    answer = await control.pipeline.ask(
        "RepositoryIndex", pb.RepositoryIndexRequest(ready=params.ready).SerializeToString(),
        headers=headers_of(request), access="admin")
    return json_response(message_to_json(pb.RepositoryIndexResponse.FromString(answer))["models"])


@router.post("/v2/repository/models/{model_name}/load",
             summary="load a model on every runtime worker (admin)",
             openapi_extra=body_doc(s.RepositoryChange))
async def repository_load(request: Request, model_name: str) -> Response:
    model = check_name(model_name)  # checked here and again in each worker, before any write
    params = await _change_parameters(request)
    check_upload(params.keys())
    load = pb.RepositoryModelLoadRequest(model_name=model)
    for key, value in params.items():
        _set_parameter(load.parameters[key], key, value)
    await control_of(request).pipeline.broadcast("RepositoryModelLoad", load.SerializeToString(),
                                                 model, headers_of(request))
    return Response(b"", 200, media_type="application/json")


@router.post("/v2/repository/models/{model_name}/unload",
             summary="unload a model on every runtime worker (admin)",
             openapi_extra=body_doc(s.RepositoryChange))
async def repository_unload(request: Request, model_name: str) -> Response:
    model = check_name(model_name)
    await _change_parameters(request)
    unload = pb.RepositoryModelUnloadRequest(model_name=model)
    await control_of(request).pipeline.broadcast(
        "RepositoryModelUnload", unload.SerializeToString(), model, headers_of(request))
    return Response(b"", 200, media_type="application/json")


async def _change_parameters(request: Request) -> dict[str, Any]:
    """Triton's load / unload body, `{"parameters": {...}}` or empty, read after auth."""
    control = control_of(request)
    control.admit(request, admin=True)  # NOTE: before reading the body
    data = await control.body(request)
    return dict(parse_body(s.RepositoryChange, data, "load/unload").parameters)


def _set_parameter(target: Any, key: str, value: Any) -> None:
    """One load parameter: files arrive base64-encoded, the rest as JSON scalars."""
    if key.startswith("file:"):
        if not isinstance(value, str):
            raise invalid_argument(f"parameter '{key}': expected the file's content in base64")
        try:
            target.bytes_param = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise invalid_argument(f"parameter '{key}': not valid base64") from None
    elif isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise invalid_argument(f"parameter '{key}': {value} does not fit in 64 bits")
        target.int64_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        raise invalid_argument(f"parameter '{key}': expected a string, integer or boolean")
