"""The OpenAPI 3.0 description of the gateway's HTTP API, built once, served at /v2/openapi.json.

A test runs schemathesis against a live gateway with it: every answer must fit these schemas.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from common import __version__
from common.datatypes import ALL_DATATYPES
from common.names import NAME_PATTERN
from common.policy import ROLES
from common.registry.versions import STATES
from gateway.admin_api import MAX_AUDIT_LIMIT, MAX_COUNT

#: The edge bundle targets (tensorgate.edge.source.TARGETS; a unit test keeps them equal).
EDGE_TARGETS = ("onnx", "onnx-fp16", "onnx-int8", "ort")
_NAME_PATTERN = NAME_PATTERN
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Schema], required: tuple[str, ...] = (),
            closed: bool = False) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:  # requests: an unknown field is refused, so generated bodies must not have one
        schema["additionalProperties"] = False
    return schema


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _nullable(schema: Schema) -> Schema:
    if "$ref" in schema:
        return {"nullable": True, "allOf": [schema]}
    return {**schema, "nullable": True}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
ANY: Schema = {"nullable": True}


def _oip_schemas() -> dict[str, Schema]:
    tensor = _object({"name": STRING, "datatype": STRING, "shape": _array(INTEGER)},
                     ("name", "datatype", "shape"))
    return {
        "Error": _object({"error": STRING}, ("error",)),
        "Live": _object({"live": BOOLEAN}, ("live",)),
        "Ready": _object({"ready": BOOLEAN}, ("ready",)),
        "ServerMetadata": _object({"name": STRING, "version": STRING,
                                   "extensions": _array(STRING)},
                                  ("name", "version", "extensions")),
        "TensorMetadata": tensor,
        "ModelMetadata": _object({"name": STRING, "versions": _array(STRING),
                                  "platform": STRING, "inputs": _array(_ref("TensorMetadata")),
                                  "outputs": _array(_ref("TensorMetadata"))},
                                 ("name", "inputs", "outputs")),
        "ModelConfig": {"type": "object", "description": "Triton's ModelConfig as JSON."},
        "ModelStatistics": _object({"model_stats": _array(_object({
            "name": STRING, "version": STRING, "last_inference": INTEGER,
            "inference_count": INTEGER, "execution_count": INTEGER,
            "inference_stats": {"type": "object"}, "batch_stats": _array({"type": "object"}),
        }, ("name", "version")))}, ("model_stats",)),
        "RepositoryIndexRequest": _object({"ready": BOOLEAN}),
        "RepositoryIndex": _array(_object({"name": STRING, "version": STRING, "state": STRING,
                                           "reason": STRING}, ("name",))),
        "RepositoryChange": _object({"parameters": {
            "type": "object", "description": 'Load: "config" (ModelConfig JSON) and '
                                             '"file:<path>" (base64) entries.',
            "additionalProperties": {"anyOf": [STRING, INTEGER, BOOLEAN]}}}),
    }


def _infer_schemas() -> dict[str, Schema]:
    """Inference with JSON tensors (binary tensor data is described in prose only)."""
    parameters = {"type": "object", "additionalProperties": {
        "anyOf": [STRING, NUMBER, BOOLEAN]}}
    data = {"type": "array", "items": {},
            "description": "Row-major values, flat or nested in the tensor's shape."}
    return {
        "Parameters": parameters,
        "InferenceRequest": _object({
            "id": STRING, "parameters": _ref("Parameters"),
            "inputs": _array(_object({"name": STRING, "shape": _array(INTEGER),
                                      "datatype": {"type": "string", "enum": list(ALL_DATATYPES)},
                                      "parameters": _ref("Parameters"), "data": data},
                                     ("name", "shape", "datatype"))),
            "outputs": _array(_object({"name": STRING, "parameters": _ref("Parameters")},
                                      ("name",))),
        }, ("inputs",)),
        "InferenceResponse": _object({
            "model_name": STRING, "model_version": STRING, "id": STRING,
            "parameters": _ref("Parameters"),
            "outputs": _array(_object({"name": STRING, "datatype": STRING,
                                       "shape": _array(INTEGER), "data": data,
                                       "parameters": _ref("Parameters")},
                                      ("name", "datatype", "shape"))),
        }, ("model_name", "outputs")),
    }


def _version_schemas() -> dict[str, Schema]:
    """Model versions, aliases, promote and rollback."""
    name = {"type": "string", "pattern": _NAME_PATTERN}
    version = _object({
        "model": STRING, "version": STRING, "sha256": STRING, "size": INTEGER,
        "backend": STRING, "created_by": STRING, "created_at": NUMBER, "notes": STRING,
        "state": {"type": "string", "enum": list(STATES)}, "reason": _nullable(STRING),
    }, ("model", "version", "state"))
    signature = _object({"inputs": _array(_ref("TensorMetadata")),
                         "outputs": _array(_ref("TensorMetadata"))})
    return {
        "Version": version,
        "VersionDetail": {"allOf": [version, _object({
            "signature": signature, "traffic_percent": NUMBER},
            ("signature", "traffic_percent"))]},
        "Models": _object({"models": _array(_object({
            "name": STRING, "aliases": {"type": "object", "additionalProperties": STRING},
            "versions": _array(_ref("Version"))}, ("name", "aliases", "versions")))},
            ("models",)),
        "ModelDetail": _object({
            "name": STRING, "aliases": {"type": "object", "additionalProperties": STRING},
            "versions": _array(_ref("VersionDetail")),
            "traffic": _nullable(_ref("TrafficPolicy")),
            "history": _array(_ref("AuditEntry"))},
            ("name", "aliases", "versions", "traffic", "history")),
        "PromoteRequest": _object({"to": name}, closed=True),
        "Promoted": _object({"model": STRING, "alias": STRING, "version": STRING,
                             "previous": _nullable(STRING)},
                            ("model", "alias", "version", "previous")),
        "RollbackRequest": _object({"alias": name}, closed=True),
        "RolledBack": _object({"model": STRING, "alias": STRING, "from": STRING, "to": STRING},
                              ("model", "alias", "from", "to")),
    }


def _policy_schemas() -> dict[str, Schema]:
    """Traffic policies, API keys and the audit log."""
    role = {"type": "string", "enum": list(ROLES)}
    count = {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}
    shadow = _object({"version": STRING, "percent": {"type": "number", "exclusiveMinimum": True,
                                                     "minimum": 0, "maximum": 100}},
                     ("version", "percent"), closed=True)
    return {
        "TrafficRequest": _object({
            "weights": {"type": "object", "minProperties": 1, "additionalProperties": {
                "type": "integer", "minimum": 1}},
            "sticky": {"type": "string", "description": "key, sub or header:<name>"},
            "shadow": _nullable(shadow)}, ("weights",), closed=True),
        "TrafficPolicy": _object({
            "model": STRING, "weights": {"type": "object", "additionalProperties": INTEGER},
            "sticky": STRING, "shadow": _nullable(shadow)},
            ("model", "weights", "sticky", "shadow")),
        "Key": _object({"key_id": STRING, "name": STRING, "role": role,
                        "models": _array(STRING), "rate": NUMBER, "burst": INTEGER,
                        "concurrency": INTEGER, "created_at": NUMBER, "revoked": BOOLEAN},
                       ("key_id", "name", "role", "models", "revoked")),
        "Keys": _object({"keys": _array(_ref("Key"))}, ("keys",)),
        "KeyRequest": _object({"name": {"type": "string", "pattern": _NAME_PATTERN},
                               "role": role,
                               "models": {"type": "array", "minItems": 1, "items": {
                                   "type": "string", "minLength": 1, "pattern": r"\S"}},
                               "rate": {"type": "number", "minimum": 0},
                               "burst": count, "concurrency": count},
                              ("name", "role"), closed=True),
        "CreatedKey": _object({"key": _ref("Key"), "secret": STRING}, ("key", "secret")),
        "AuditEntry": _object({"id": INTEGER, "at": NUMBER, "actor": STRING, "action": STRING,
                               "target": STRING, "before": ANY, "after": ANY},
                              ("id", "at", "actor", "action", "target")),
        "AuditLog": _object({"entries": _array(_ref("AuditEntry"))}, ("entries",)),
    }


def _json_content(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _op(summary: str, ok: Schema | None, *, body: Schema | None = None,
        body_required: bool = False, parameters: tuple[Schema, ...] = (), status: str = "200",
        open_: bool = False, media: str = "application/json",
        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One operation: its success answer, and `{"error": ...}` for every other status."""
    success: dict[str, Any] = {"description": summary}
    if ok is not None:
        success["content"] = {media: {"schema": ok}}
    responses: dict[str, Any] = {status: success, **(extra or {}),
                                 "default": {"description": "an error, with what was wrong",
                                             "content": _json_content(_ref("Error"))}}
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": _json_content(body)}
    if open_:
        operation["security"] = []
    return operation


def _path_param(name: str, schema: Schema = STRING) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query_param(name: str, schema: Schema, description: str,
                 required: bool = False) -> Schema:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


NAME: Schema = {"type": "string", "minLength": 1}
MODEL = _path_param("model_name", NAME)
VERSION = _path_param("model_version", NAME)
BINARY: Schema = {"type": "string", "format": "binary"}


def _per_version(paths: dict[str, Any], suffix: str, operations: dict[str, Any]) -> None:
    """A model path and its `/versions/{model_version}` twin, the same operations on each."""
    for prefix, params in (("/v2/models/{model_name}", [MODEL]),
                           ("/v2/models/{model_name}/versions/{model_version}", [MODEL, VERSION])):
        paths[prefix + suffix] = {"parameters": params, **operations}


def _oip_paths() -> dict[str, Any]:
    not_ready = {"400": {"description": "the model is not ready",
                         "content": _json_content({"anyOf": [_ref("Ready"), _ref("Error")]})}}
    server_not_ready = {"503": {"description": "no runtime worker is ready",
                                "content": _json_content(_ref("Ready"))}}
    infer = _op("run an inference (JSON tensors; binary tensor data with "
                "Inference-Header-Content-Length)", _ref("InferenceResponse"),
                body=_ref("InferenceRequest"), body_required=True)
    infer["responses"]["200"]["content"]["application/octet-stream"] = {"schema": BINARY}
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": _op("the server is live", _ref("Live"), open_=True)},
        "/v2/health/ready": {"get": _op("a runtime worker is ready", _ref("Ready"), open_=True,
                                        extra=server_not_ready)},
        "/v2": {"get": _op("server metadata", _ref("ServerMetadata"))},
        "/v2/openapi.json": {"get": _op("this description", {"type": "object"}, open_=True)},
        "/v2/models/stats": {"get": _op("statistics of every model",
                                        _ref("ModelStatistics"))},
        "/v2/repository/index": {"post": _op("the models in the repository (admin)",
                                             _ref("RepositoryIndex"),
                                             body=_ref("RepositoryIndexRequest"))},
    }
    _per_version(paths, "", {"get": _op("model metadata", _ref("ModelMetadata"))})
    _per_version(paths, "/ready", {"get": _op("the model is ready", _ref("Ready"), open_=True,
                                              extra=not_ready)})
    _per_version(paths, "/config", {"get": _op("model configuration", _ref("ModelConfig"))})
    _per_version(paths, "/stats", {"get": _op("model statistics", _ref("ModelStatistics"))})
    _per_version(paths, "/infer", {"post": infer})
    for action in ("load", "unload"):
        paths[f"/v2/repository/models/{{model_name}}/{action}"] = {
            "parameters": [MODEL],
            "post": _op(f"{action} a model on every runtime worker (admin)", None,
                        body=_ref("RepositoryChange"))}
    # NOTE: gateway/feedback.py's rule: printable ASCII without spaces, 1 to 128 characters.
    truth = _object({"id": {"type": "string", "minLength": 1, "maxLength": 128,
                            "pattern": "^[\\x21-\\x7e]+$"},
                     "truth": {"type": "number"}}, ("id", "truth"), closed=True)
    paths["/v2/models/{model_name}/feedback"] = {"parameters": [MODEL], "post": _op(
        "the ground truth of earlier answers, by request id, for the A/B report",
        _object({"recorded": {"type": "integer"}, "unmatched": {"type": "integer"}},
                ("recorded", "unmatched")),
        body={"oneOf": [truth, _object({"feedback": _array(truth)}, ("feedback",), closed=True)]},
        body_required=True)}
    paths["/v2/models/{model_name}/versions/{model_version}/edge"] = {"get": _op(
        "the version's edge bundle (.tar.gz), built on first request and cached", BINARY,
        media="application/gzip",
        parameters=(MODEL, _path_param("model_version", {"type": "string",
                                                         "pattern": "^[0-9]+$"}),
                    _query_param("target", {"type": "string", "enum": list(EDGE_TARGETS)},
                                 "what the bundle runs with", required=True)))}
    return paths


def _admin_paths() -> dict[str, Any]:
    model = _path_param("model", NAME)
    version = _path_param("version", NAME)
    force = _query_param("force", BOOLEAN, "retire even while the version holds traffic")
    audit = (_query_param("model", STRING, "only this model's entries"),
             _query_param("limit", {"type": "integer", "minimum": 1,
                                    "maximum": MAX_AUDIT_LIMIT}, "newest entries (100)"))
    return {
        "/v2/admin/models": {"get": _op("every model's versions and aliases", _ref("Models"))},
        "/v2/admin/models/{model}": {"parameters": [model], "get": _op(
            "a model: versions, signatures, aliases, traffic share, history",
            _ref("ModelDetail"))},
        "/v2/admin/models/{model}/versions/{version}": {"parameters": [model, version],
                                                        "delete": _op(
            "retire a version (refused while it holds traffic unless force=true)",
            _ref("Version"), parameters=(force,))},
        "/v2/admin/models/{model}/versions/{version}/promote": {
            "parameters": [model, version],
            "post": _op("point an alias (production by default) at a ready version",
                        _ref("Promoted"), body=_ref("PromoteRequest"))},
        "/v2/admin/models/{model}/rollback": {"parameters": [model], "post": _op(
            "point an alias back at its previous ready version", _ref("RolledBack"),
            body=_ref("RollbackRequest"))},
        "/v2/admin/models/{model}/traffic": {
            "parameters": [model],
            "get": _op("the model's traffic policy", _ref("TrafficPolicy")),
            "put": _op("set the model's weights, stickiness and shadow", _ref("TrafficPolicy"),
                       body=_ref("TrafficRequest"), body_required=True),
            "delete": _op("remove the model's traffic policy (returns it)",
                          _ref("TrafficPolicy"))},
        "/v2/admin/keys": {
            "get": _op("the API keys (never their secrets)", _ref("Keys"), parameters=(
                _query_param("all", BOOLEAN, "include revoked keys"),)),
            "post": _op("create a key; its secret is in this answer only", _ref("CreatedKey"),
                        body=_ref("KeyRequest"), body_required=True, status="201")},
        "/v2/admin/keys/{name}": {"parameters": [_path_param("name", NAME)],
                                  "delete": _op("revoke a key for good", _ref("Key"))},
        "/v2/admin/audit": {"get": _op("the audit log, newest first", _ref("AuditLog"),
                                       parameters=audit)},
    }


def build_document() -> dict[str, Any]:
    """The whole description; paths in the order a reader meets them."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "tensorgate gateway", "version": __version__,
                 "description": "The Open Inference Protocol (KServe v2) with Triton's "
                                "extensions, the admin API and edge bundles. Errors are "
                                '`{"error": "<message>"}`.'},
        "paths": {**_oip_paths(), **_admin_paths()},
        "components": {
            "schemas": {**_oip_schemas(), **_infer_schemas(), **_version_schemas(),
                        **_policy_schemas()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "an API key (tg_...) or a JWT"}},
        },
        "security": [{"bearer": []}],
    }


@functools.cache
def document_bytes() -> bytes:
    """The description as JSON, built on first request and kept."""
    return orjson.dumps(build_document())
