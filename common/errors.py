"""The one error type of tensorgate: a gRPC canonical code, a message, and the table to HTTP."""

from __future__ import annotations

import grpc

# NOTE: one table for every code, so HTTP and gRPC callers always see the same failure class.
CODE_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

class TensorgateError(Exception):
    """A failure to report to the caller, with the gRPC code that classifies it.

    `retry_after`, when set, is how many seconds the caller should wait before trying again
    (HTTP sends it as `Retry-After`, whole seconds rounded up, at least 1).
    """

    def __init__(
        self, code: grpc.StatusCode, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def http_status(self) -> int:
        return CODE_TO_HTTP[self.code]

    def __repr__(self) -> str:
        return f"TensorgateError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> TensorgateError:
    return TensorgateError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> TensorgateError:
    return TensorgateError(grpc.StatusCode.NOT_FOUND, message)


def unavailable(message: str) -> TensorgateError:
    return TensorgateError(grpc.StatusCode.UNAVAILABLE, message)
