"""The pydantic models the control plane's OpenAPI document is generated from, and the helpers
that put a request body's schema in it (bodies are read after auth, never by FastAPI)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from common.datatypes import ALL_DATATYPES
from common.errors import invalid_argument
from common.registry.versions import STATES
from gateway.bodies import validated

#: Schemas of request bodies' nested models, merged into the document's components.
BODY_SCHEMAS: dict[str, Any] = {}
_REF = "#/components/schemas/{model}"
Scalar = str | int | float | bool


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, and what was expected")


#: Every operation's answer when it fails, whatever the status.
ERRORS: dict[int | str, dict[str, Any]] = {
    "default": {"model": ErrorBody, "description": "an error: what was wrong and what was "
                                                  "expected"}}
#: An operation that needs no credential.
OPEN: dict[str, Any] = {"security": []}


def body_doc(model: type[BaseModel], required: bool = False,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as the JSON request body."""
    schema = model.model_json_schema(ref_template=_REF)
    BODY_SCHEMAS.update(schema.pop("$defs", {}))
    BODY_SCHEMAS[model.__name__] = schema
    return {"requestBody": {"required": required, "content": {
        "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}}},
        **(extra or {})}


def parse_body(model: type[BaseModel], data: bytes, what: str) -> Any:
    """`data` (JSON; empty: an empty object) as `model`; INVALID_ARGUMENT saying what is wrong."""
    try:
        document = orjson.loads(data) if data.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise invalid_argument(f"{what} body is not valid JSON: {exc}") from None
    return validated(model, document, what)


# -- the Open Inference Protocol ---------------------------------------------------------------

class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = []
    platform: str = ""
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelStat(BaseModel):
    name: str
    version: str
    last_inference: int = 0
    inference_count: int = 0
    execution_count: int = 0
    inference_stats: dict[str, Any] = {}
    batch_stats: list[dict[str, Any]] = []


class ModelStatistics(BaseModel):
    model_stats: list[ModelStat]


class RepositoryIndexRequest(BaseModel):
    ready: bool = False


class RepositoryModel(BaseModel):
    name: str
    version: str = ""
    state: str = ""
    reason: str = ""


class RepositoryChange(BaseModel):
    parameters: dict[str, str | int | bool] = Field(
        default={}, description='load: "config" (ModelConfig JSON) and "file:<path>" (base64)')


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal[ALL_DATATYPES]  # type: ignore[valid-type]
    parameters: dict[str, Scalar] = {}
    data: list[Any] = Field(default=[], description="row-major values, flat or nested")


class InferOutputRequest(BaseModel):
    name: str
    parameters: dict[str, Scalar] = {}


class InferenceRequest(BaseModel):
    """JSON tensors; binary tensor data follows the JSON when Inference-Header-Content-Length
    gives the JSON's length."""

    id: str = ""
    parameters: dict[str, Scalar] = {}
    inputs: list[InferInput]
    outputs: list[InferOutputRequest] = []


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] = []
    parameters: dict[str, Scalar] = {}


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str = ""
    id: str = ""
    parameters: dict[str, Scalar] = {}
    outputs: list[InferOutput]


# -- the admin API's answers -------------------------------------------------------------------

class Version(BaseModel):
    model: str
    version: str
    state: Literal[STATES]  # type: ignore[valid-type]
    sha256: str = ""
    size: int = 0
    backend: str = ""
    created_by: str = ""
    created_at: float = 0
    notes: str = ""
    reason: str | None = None


class VersionDetail(Version):
    signature: dict[str, list[TensorMetadata]]
    traffic_percent: float


class ModelEntry(BaseModel):
    name: str
    aliases: dict[str, str]
    versions: list[Version]


class Models(BaseModel):
    models: list[ModelEntry]


class Shadow(BaseModel):
    version: str
    percent: float


class TrafficPolicy(BaseModel):
    model: str
    weights: dict[str, int]
    sticky: str
    shadow: Shadow | None


class AuditEntry(BaseModel):
    id: int
    at: float
    actor: str
    action: str
    target: str
    before: Any = None
    after: Any = None


class AuditLog(BaseModel):
    entries: list[AuditEntry]


class ModelDetail(BaseModel):
    name: str
    aliases: dict[str, str]
    versions: list[VersionDetail]
    traffic: TrafficPolicy | None
    history: list[AuditEntry]


class Promoted(BaseModel):
    model: str
    alias: str
    version: str
    previous: str | None


class RolledBack(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    model: str
    alias: str
    from_: str = Field(alias="from")
    to: str


class Key(BaseModel):
    key_id: str
    name: str
    role: str
    models: list[str]
    rate: float = 0
    burst: int = 0
    concurrency: int = 0
    created_at: float = 0
    revoked: bool


class Keys(BaseModel):
    keys: list[Key]


class CreatedKey(BaseModel):
    key: Key
    secret: str
