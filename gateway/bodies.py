"""A request body's JSON document validated by a pydantic model, its problems said in one
message: the unknown fields, a missing one, or the first other."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from common.errors import invalid_argument

M = TypeVar("M", bound=BaseModel)


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
