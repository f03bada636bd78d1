"""Request bodies as pydantic models (the admin API's), and a JSON document validated by one
with its problems said in one message: the unknown fields, a missing one, or the first other."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from common.errors import invalid_argument
from common.names import NAME_PATTERN, check_name
from common.policy import ROLES
from common.registry.versions import PRODUCTION

M = TypeVar("M", bound=BaseModel)
#: The largest burst or concurrency a key may have: SQLite holds 64 bits, and more is a typo.
MAX_COUNT = 2**31 - 1


def validated(model: type[M], document: Any, what: str) -> M:
    """`document` as `model`; INVALID_ARGUMENT naming what is wrong and what was expected.

    A validator may raise a TensorgateError itself (the naming rule's message): it goes out as is.
    """
    if isinstance(document, model):
        return document
    fields = ", ".join(model.model_fields)
    if not isinstance(document, dict):
        raise invalid_argument(f"the {what} body must be a JSON object with {fields}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise invalid_argument(explain(exc, what, fields)) from None


def explain(exc: ValidationError, what: str, fields: str) -> str:
    errors = exc.errors()
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"
               and len(e["loc"]) == 1]
    if unknown:
        return (f"unknown field(s) {', '.join(map(repr, unknown))} in the {what} body; "
                f"expected {fields}")
    missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing" and len(e["loc"]) == 1]
    if missing:
        return f'the {what} body needs "{missing[0]}"'
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "value_error":
        return str(first["ctx"]["error"])
    return f'"{where}" in the {what} body: {first["msg"]}, got {first.get("input")!r}'


class _Body(BaseModel):
    """A request body: a JSON object with only the fields its call knows."""

    model_config = ConfigDict(extra="forbid")


class PromoteBody(_Body):
    to: str = Field(default=PRODUCTION, description="the alias to point", pattern=NAME_PATTERN)

    @field_validator("to", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return check_name(value, '"to" (an alias name)')


class RollbackBody(_Body):
    alias: str = Field(default=PRODUCTION, description="the alias to move back",
                       pattern=NAME_PATTERN)

    @field_validator("alias", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return check_name(value, '"alias" (an alias name)')


class TrafficBody(_Body):
    """Weights, stickiness and shadow; their values are checked as the CLI's are (registry)."""

    weights: dict[str, Any] = Field(description='version to integer weight, like {"1": 90, '
                                                '"2": 10}', json_schema_extra={
        "minProperties": 1, "additionalProperties": {"type": "integer", "minimum": 1}})
    sticky: str = Field("key", description="key, sub or header:<name>")
    shadow: dict[str, Any] | None = Field(None, json_schema_extra={
        "properties": {"version": {"type": "string"}, "percent": {
            "type": "number", "exclusiveMinimum": 0, "maximum": 100}},
        "required": ["version", "percent"], "additionalProperties": False})

    @field_validator("shadow", mode="before")
    @classmethod
    def _shadow(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, dict)
                                  or set(value) != {"version", "percent"}):
            raise invalid_argument('"shadow" must be null or {"version": "<version>", '
                                   f'"percent": <0-100>}}, got {value!r}')
        return value


class KeyBody(_Body):
    name: str = Field(pattern=NAME_PATTERN)
    role: str = Field(json_schema_extra={"enum": list(ROLES)})
    models: list[str] = Field(["*"], description="globs of the models it may use",
                              json_schema_extra={"minItems": 1})
    rate: float = Field(0.0, ge=0, description="requests per second; 0: no limit")
    burst: int = Field(0, description="0: no limit", ge=0, le=MAX_COUNT)
    concurrency: int = Field(0, description="0: no limit", ge=0, le=MAX_COUNT)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return check_name(value, "key name")

    @field_validator("burst", "concurrency", mode="before")
    @classmethod
    def _count(cls, value: Any, info: ValidationInfo) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise invalid_argument(f'"{info.field_name}" must be a whole number from 0 (no '
                                   f"limit) to {MAX_COUNT}, got {value!r}")
        return value
