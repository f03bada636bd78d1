"""KServe v1 / TensorFlow Serving REST on the gateway's HTTP port: predict, status, metadata.

Predict goes through the same pipeline as v2 infer, so auth, quotas, splits and metrics apply.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from common.errors import TensorgateError, not_found
from common.names import check_name, check_version, is_version, shown
from common.proto import grpc_service_pb2 as pb
from gateway.context import Headers, RequestContext
from gateway.pipeline import Pipeline
from gateway.routes.base import control_of, headers_of
from gateway.routes.schemas import ERRORS
from gateway.tfserving import (
    DEFAULT_SIGNATURE,
    Predict,
    PredictBody,
    Signature,
    decode_predict,
    encode_predict,
    metadata_body,
    signature_of,
    status_body,
)

log = logging.getLogger("tensorgate.gateway")
router: APIRouter = APIRouter(tags=["TensorFlow Serving / KServe v1"], responses=ERRORS)
#: The metrics' protocol label of v1 predicts (a constant: the label set stays bounded).
PROTOCOL = "http_v1"
#: Signatures kept, of served models only; a cached one is re-read after SIGNATURE_TTL_S.
MAX_SIGNATURES = 256
SIGNATURE_TTL_S = 10.0
_PREDICT_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": PredictBody.model_json_schema()}}}}
_UNSUPPORTED = {"classify": "Classify", "regress": "Regress"}


class Signatures:
    """Each served model's signature by (model, version): metadata asked once, not per predict."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[float, Signature]] = {}

    async def get(self, pipeline: Pipeline, model: str, version: str,
                  headers: Headers) -> Signature:
        key = (model, version)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < SIGNATURE_TTL_S:
            return hit[1]
        signature = signature_of(await _metadata(pipeline, model, version, headers))
        # NOTE: only served models: a caller's made-up names never take a row here.
        if pipeline.served(model):
            self._cache.pop(key, None)
            if len(self._cache) >= MAX_SIGNATURES:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = (now, signature)
        return signature


def _signatures(request: Request) -> Signatures:
    state = request.app.state
    if not hasattr(state, "v1_signatures"):
        state.v1_signatures = Signatures()
    signatures: Signatures = state.v1_signatures
    return signatures


async def _metadata(pipeline: Pipeline, model: str, version: str,
                    headers: Headers) -> pb.ModelMetadataResponse:
    request = pb.ModelMetadataRequest(name=model, version=version)
    answer = await pipeline.ask("ModelMetadata", request.SerializeToString(), model, version,
                                headers)
    return pb.ModelMetadataResponse.FromString(answer)


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(payload if isinstance(payload, bytes) else orjson.dumps(payload), status,
                    headers, media_type="application/json")


@router.post("/v1/models/{model}:predict", openapi_extra=_PREDICT_DOC,
             summary="Predict, row (`instances`) or columnar (`inputs`) format")
async def predict(model: str, request: Request) -> Response:
    return await _predict(request, model, "")


@router.post("/v1/models/{model}/versions/{version}:predict", openapi_extra=_PREDICT_DOC,
             summary="Predict with one version")
async def predict_version(model: str, version: str, request: Request) -> Response:
    return await _predict(request, model, check_version(version))


@router.post("/v1/models/{model}:{method}", include_in_schema=False)
async def other_method(model: str, method: str, request: Request) -> Response:
    return _unsupported(request, model, method)


@router.post("/v1/models/{model}/versions/{version}:{method}", include_in_schema=False)
async def other_method_version(model: str, version: str, method: str,
                               request: Request) -> Response:
    return _unsupported(request, model, method)


@router.api_route("/v1/models/{model}/labels/{rest:path}", methods=["GET", "POST"],
                  include_in_schema=False)
async def labels(model: str, rest: str, request: Request) -> Response:
    control_of(request).admit(request, check_name(model))
    raise TensorgateError(grpc.StatusCode.UNIMPLEMENTED, "version labels are not supported "
                          "here: name a version (/versions/N) or none (the default)")


@router.get("/v1/models/{model}/metadata", summary="The model's signature")
async def metadata(model: str, request: Request) -> Response:
    return await _signature_metadata(request, model, "")


@router.get("/v1/models/{model}/versions/{version}/metadata", summary="A version's signature")
async def metadata_version(model: str, version: str, request: Request) -> Response:
    return await _signature_metadata(request, model, check_version(version))


@router.get("/v1/models/{model}", summary="Each version's state")
async def status(model: str, request: Request) -> Response:
    return await _status(request, model, "")


@router.get("/v1/models/{model}/versions/{version}", summary="One version's state")
async def status_version(model: str, version: str, request: Request) -> Response:
    if ":" in version:
        raise HTTPException(405, "use POST for :predict", {"allow": "POST"})
    return await _status(request, model, check_version(version))


async def _predict(request: Request, model: str, version: str) -> Response:
    control = control_of(request)
    check_name(model)
    headers = headers_of(request)
    decoded: list[Predict] = []

    async def load(call: RequestContext) -> bytes:
        """Called by the pipeline once the caller is admitted on its headers alone."""
        described = version or _production(control.pipeline, model)
        signature = await _signatures(request).get(control.pipeline, model, described, headers)
        predict = decode_predict(await control.body(request), signature, model, version)
        if predict.signature_name not in ("", DEFAULT_SIGNATURE):
            log.debug("v1 predict of %s: signature_name %s ignored, every model here has only "
                      "'%s'", model, shown(predict.signature_name), DEFAULT_SIGNATURE)
        decoded.append(predict)
        return predict.request.SerializeToString()

    answer = await control.pipeline.infer(RequestContext(model, version, PROTOCOL, headers), load)
    response = pb.ModelInferResponse.FromString(answer)
    return _json(encode_predict(response, decoded[0]), 200,
                 {"x-tensorgate-model-version": response.model_version,
                  "x-request-id": response.id})


def _unsupported(request: Request, model: str, method: str) -> Response:
    control_of(request).admit(request, check_name(model))
    if method in _UNSUPPORTED:
        raise TensorgateError(grpc.StatusCode.UNIMPLEMENTED,
                              f"TF Serving's {_UNSUPPORTED[method]} API is not supported here: "
                              f"call :predict")
    raise not_found(f"no such method {shown(method)}: the v1 API here is :predict")


async def _signature_metadata(request: Request, model: str, version: str) -> Response:
    pipeline = control_of(request).pipeline
    version = version or _production(pipeline, check_name(model))
    meta = await _metadata(pipeline, model, version, headers_of(request))
    # NOTE: the runtime describes its newest version when asked for none
    newest = max((v for v in meta.versions if is_version(v)), key=int, default="")
    return _json(metadata_body(model, version or newest, signature_of(meta)))


def _production(pipeline: Pipeline, model: str) -> str:
    """The version a predict without one gets outside a split: the production alias's, if any."""
    return pipeline.snapshot().production.get(model, "")


async def _status(request: Request, model: str, version: str) -> Response:
    if ":" in model:
        raise HTTPException(405, "use POST for :predict", {"allow": "POST"})
    pipeline = control_of(request).pipeline
    headers = headers_of(request)
    meta = await _metadata(pipeline, check_name(model), "", headers)
    if version and version not in meta.versions:
        raise not_found(f"model '{model}' has no version {version}; it has "
                        f"{', '.join(meta.versions) or 'none'}")
    ready = {}
    for each in [version] if version else list(meta.versions):
        answer = await pipeline.ask("ModelReady", pb.ModelReadyRequest(
            name=model, version=each).SerializeToString(), model, each, headers)
        ready[each] = pb.ModelReadyResponse.FromString(answer).ready
    return _json(status_body(ready))

