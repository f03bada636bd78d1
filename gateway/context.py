"""One inference request as the pipeline's stages see it: what the transport read, then what each
stage decided (the caller, its ticket, the version routed to, the worker, the outcome, the time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from opentelemetry.trace import Span

from common.policy import Principal, TrafficPolicy
from gateway.quota import FREE, Ticket

Headers = Mapping[str, str]  # HTTP headers or gRPC metadata, names in lower case


@dataclass(slots=True)
class RequestContext:
    """Made by the transport, one per request; `Pipeline.infer` hands it to each stage in turn."""

    #: The model the caller named.
    model: str
    #: The version the caller asked for ("": the traffic policy's, else the runtime's default).
    version: str
    #: The transport, as metrics and logs label it: "grpc", "http" or "v1".
    protocol: str
    headers: Headers
    #: The request's id: the caller's, else one the pipeline gives it before forwarding.
    id: str = ""
    #: The caller's deadline, in seconds from its arrival (None: the gateway's default).
    timeout_s: float | None = None
    #: When the pipeline took the request (time.perf_counter).
    started: float = 0.0
    #: Auth: the caller, once admitted (None: refused, or not yet asked).
    principal: Principal | None = None
    #: The caller as authenticated on a unary gRPC call's metadata, before its message was
    #: read: the auth stage then checks only that it may use the model.
    authenticated: Principal | None = None
    #: Quota: the caller's ticket, given back when the request is done (FREE holds nothing).
    ticket: Ticket = FREE
    #: Route: the model's traffic policy (A/B split, shadow), None for a model without one.
    policy: TrafficPolicy | None = None
    #: Route and split: the version routed to ("": the runtime's default); None: not routed.
    routed: str | None = None
    #: Some tensor is in a shared-memory region (its name now scoped by the caller's owner id).
    regions: bool = False
    #: Balance: the address of the worker called last (a retry moves it).
    endpoint: str = ""
    #: Tracing: the request's span when tracing is on.
    span: Span | None = None
    #: The outcome: OK, or the code of the error the caller got.
    code: grpc.StatusCode = grpc.StatusCode.OK
    #: Seconds from `started` to the outcome.
    elapsed: float = 0.0
