"""Per-model routes beyond the protocol: feedback (ground truth for the A/B report) and edge
bundle downloads."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from common.errors import invalid_argument, not_found
from common.names import check_name, is_version, shown
from gateway.feedback import encode_result, handle_feedback
from gateway.openapi import EDGE_TARGETS
from gateway.routes.base import control_of, headers_of
from gateway.routes.schemas import ERRORS, body_doc

router: APIRouter = APIRouter(responses=ERRORS)
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9_.-]")
_FILE_CHUNK = 1 << 20


class Truth(BaseModel):
    """gateway/feedback.py's rule: ids are printable ASCII without spaces, 1 to 128 long."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128, pattern="^[\\x21-\\x7e]+$")
    truth: float


class Truths(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feedback: list[Truth]


class Recorded(BaseModel):
    recorded: int
    unmatched: int


def _feedback_doc() -> dict[str, object]:
    body_doc(Truth)
    body_doc(Truths)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "oneOf": [{"$ref": "#/components/schemas/Truth"},
                  {"$ref": "#/components/schemas/Truths"}]}}}}}


@router.post("/v2/models/{model_name}/feedback",
             summary="the ground truth of earlier answers, by request id, for the A/B report",
             responses={200: {"model": Recorded}}, openapi_extra=_feedback_doc())
async def feedback(request: Request, model_name: str) -> Response:
    control = control_of(request)
    result = await handle_feedback(control.pipeline, headers_of(request),
                                   check_name(model_name), lambda: control.body(request))
    return Response(encode_result(result), 200, media_type="application/json")


@router.get("/v2/models/{model_name}/versions/{model_version}/edge",
            summary="the version's edge bundle (.tar.gz), built on first request and cached",
            responses={200: {"content": {"application/gzip": {
                "schema": {"type": "string", "format": "binary"}}},
                "description": "the bundle"}})
async def edge_bundle(request: Request, model_name: str,
                      model_version: str, target: str | None = Query(
                          None, description="what the bundle runs with",
                          json_schema_extra={"enum": list(EDGE_TARGETS)})) -> Response:
    control = control_of(request)
    control.admit(request, check_name(model_name))
    if control.edge is None:
        raise not_found("this gateway builds no edge bundles: it has no local model "
                        "repository (--model-repository)")
    if not is_version(model_version):
        raise invalid_argument(f"edge bundles are built for a version number, got "
                               f"{shown(model_version)}")
    if not target:
        raise invalid_argument("name the edge target: ?target=onnx, onnx-fp16, onnx-int8 "
                               "or ort")
    path = await asyncio.to_thread(control.edge, model_name, int(model_version), target)
    filename = _UNSAFE_FILENAME.sub("_", path.name)
    return FileStream(path, {"content-type": "application/gzip",
                             "content-disposition": f'attachment; filename="{filename}"'})


class FileStream(Response):
    """A file sent in chunks read off the event loop, its length from the file opened (even if
    renamed over since). Unlike FileResponse it needs no task listening for a disconnect."""

    def __init__(self, path: Path, headers: dict[str, str]) -> None:
        super().__init__(None, 200, headers)
        self.path = path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with self.path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            headers = [*(h for h in self.raw_headers if h[0] != b"content-length"),
                       (b"content-length", b"%d" % size)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            while chunk := await asyncio.to_thread(file.read, _FILE_CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
