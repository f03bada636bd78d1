"""The one error table: every gRPC code has an HTTP status, and they are the expected ones."""

from __future__ import annotations

import grpc
import pytest

from common.errors import CODE_TO_HTTP, TensorgateError

EXPECTED = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


def test_every_grpc_code_is_in_the_table() -> None:
    assert set(CODE_TO_HTTP) == set(grpc.StatusCode)


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_code_maps_to_its_http_status(code: grpc.StatusCode) -> None:
    error = TensorgateError(code, "what went wrong")
    assert error.http_status == EXPECTED[code.name]
    assert error.message == "what went wrong" and str(error) == "what went wrong"
