"""The gateway's data path, in order: auth → quota → route → split → balance → forward → shadow.

Knows nothing of HTTP or gRPC. Each inference is one `RequestContext` that the stages fill in, in
the order `Pipeline.infer` writes; status and latency are recorded once, in its `finally`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import grpc

from common import tracing
from common.errors import TensorgateError, unavailable
from common.policy import Principal, Snapshot
from common.proto import grpc_service_pb2 as pb
from common.settings import GatewaySettings
from gateway import repository_index, rewrite, split
from gateway.admission import Admission
from gateway.answers import AnswerLog
from gateway.auth import Authenticator
from gateway.context import Headers, RequestContext
from gateway.forward import Forward
from gateway.metrics import GatewayMetrics
from gateway.quota import QuotaExceeded, Quotas, Ticket
from gateway.request_log import request_log
from gateway.request_parts import Request, detached
from gateway.route import Router
from gateway.shadow import Shadow, should_shadow
from gateway.shm import SharedMemory, mentions, scope_request

#: The model label of a request whose caller was refused, or whose model is not a served one.
OTHER = "_other"
#: Models labelled by name after answering OK without the registry naming them (no registry).
MAX_ANSWERED = 256
NO_HEADERS: Headers = {}
#: audit(actor, action, target, after): record an administrative change.
Audit = Callable[[str, str, str, Any], Awaitable[None]]
#: Who may make a control-plane call: anyone (health), any key, or an admin key.
Access = Literal["open", "key", "admin"]
#: A request still to be read (HTTP): called once the caller is admitted, it fills in the
#: context's id and deadline, if the request carries them, and returns the serialized request
#: (its tensors kept apart: Parts).
Loader = Callable[[RequestContext], Awaitable[Request]]


class Pipeline:
    def __init__(self, settings: GatewaySettings, router: Router, metrics: GatewayMetrics,
                 snapshot: Callable[[], Snapshot], quotas: Quotas,
                 audit: Audit | None = None, answers: AnswerLog | None = None,
                 refresh: Callable[[], bool] | None = None) -> None:
        self.router = router
        #: Records every routed answer for `tensorgate ab report` and feedback; None: off.
        self.answers = answers
        #: Record the answers of models without a traffic policy too (A/B ones always are).
        self.record_all = settings.record_answers == "all"
        self.metrics = metrics
        self.snapshot = snapshot
        self.quotas = quotas
        self.audit = audit
        self.default_timeout = settings.default_timeout_s
        #: `refresh`: re-read the registry now (rate-limited), for a key not in the snapshot.
        self.auth = Authenticator(settings.auth, snapshot, refresh=refresh)
        self.forward = Forward(router.health, metrics)
        self.admission = Admission(settings.max_in_flight, metrics)
        self.splitter = split.Splitter()
        self.shadow = Shadow(metrics, self._shadow_call)
        self.rng = random.Random()
        # NOTE: a random prefix per process and a counter: unique across gateway processes,
        # and far cheaper per request than a uuid.
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self.request_log = request_log(settings.log_sample, settings.log_slow_ms)
        #: Models that answered OK: served ones, so their names may label metrics.
        self._answered: set[str] = set()
        #: Triton's shared-memory extensions: each caller's regions, on every worker.
        self.shared_memory = SharedMemory(self)

    def served(self, model: str) -> bool:
        """True for a model that answered OK here, or one the registry has ready or splits."""
        if model in self._answered:
            return True
        snapshot = self.snapshot()
        return model in snapshot.ready or model in snapshot.traffic

    def label(self, model: str, admitted: bool, code: grpc.StatusCode) -> str:
        """The model's metric label: its name once its caller was admitted and it is served.

        A caller's text never labels a series unchecked: refused callers and unknown names share
        one series, so the series count stays bounded whatever names callers send.
        """
        if not admitted:
            return OTHER
        if model in self._answered:
            return model
        if code == grpc.StatusCode.OK and len(self._answered) < MAX_ANSWERED:
            self._answered.add(model)  # NOTE: next time one set lookup
            return model
        return model if self.served(model) else OTHER

    async def infer(self, call: RequestContext, request: Request | Loader) -> bytes:
        """Forward a serialized ModelInferRequest; the answer's bytes come back untouched.

        The stages run in the order written here, each filling in `call`. A request without an
        id gets one, which the runtime echoes in the answer's `id`. A Loader is called only
        once admission, auth and quota passed on the headers alone.
        """
        call.started = time.perf_counter()
        answer: bytes | None = None
        self.metrics.in_flight_value.inc(1)
        if not callable(request):
            request = self._begin(call, request)
        try:
            self._admission(call)
            self._auth(call)
            self._quota(call)
            if callable(request):
                # NOTE: read, inflate and parse only now: a caller refused on its headers
                # costs no more than its headers.
                request = self._begin(call, await request(call))
            if mentions(request):
                request = self._regions(call, request)
            request = self._route(call, request)
            answer = await self._forward(call, request)
            return answer
        except TensorgateError as exc:
            call.code = exc.code
            raise
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._finish(call, answer)

    def _begin(self, call: RequestContext, request: Request) -> Request:
        """The request with its id (a fresh one if it has none) and, when tracing, its span."""
        if not call.id:
            call.id = f"{self._id_prefix}-{next(self._ids)}"
            request = rewrite.with_id(request, call.id)
        tracer = tracing.tracer()
        if tracer is None:
            return request
        call.span, traceparent = tracing.start_request(
            tracer, f"infer {call.model}", call.headers,
            {"model": call.model, "model.version": call.version, "protocol": call.protocol,
             "request.id": call.id})
        return rewrite.with_parameter(request, tracing.TRACEPARENT, traceparent)

    def _admission(self, call: RequestContext) -> None:
        """Sheds past max_in_flight, counted even then."""
        # NOTE: that is before auth, so only a served model's name may label the count (looked
        # up only when it will be shed).
        shed = self.admission.in_flight >= self.admission.limit
        self.admission.enter(call.model if not shed or self.served(call.model) else OTHER)

    def _auth(self, call: RequestContext) -> None:
        if call.authenticated is None:
            call.principal = self.admit(call.headers, call.model)
            return
        try:
            self.auth.authorize(call.authenticated, call.model)
        except TensorgateError as exc:
            self.metrics.auth_failures.labels(exc.code.name).inc()
            raise
        call.principal = call.authenticated

    def _quota(self, call: RequestContext) -> None:
        assert call.principal is not None  # NOTE: auth runs first
        call.ticket = self.quota(call.principal, call.model)

    def _regions(self, call: RequestContext, request: Request) -> Request:
        """The shared-memory regions the request names, as the caller's own (scoped names)."""
        assert call.principal is not None  # NOTE: auth runs first
        call.regions = True
        return scope_request(request, call.principal.subject)

    def _route(self, call: RequestContext, request: Request) -> Request:
        """Route and split: the version to serve, written into the request when none was asked.

        Without a traffic policy that is the production alias's version, if any, else the
        runtime's default ("" left as it is); with one, the split's choice for this caller.
        """
        snapshot = self.snapshot()
        policy = call.policy = snapshot.traffic.get(call.model)
        version = call.version
        if policy is None:
            if not version and call.model in snapshot.production:
                version = snapshot.production[call.model]
                request = rewrite.with_version(request, version)
        elif not version:
            assert call.principal is not None  # NOTE: auth runs first
            version = self.splitter.choose(
                policy, split.subject_of(policy, call.principal, call.headers))
            request = rewrite.with_version(request, version)
        call.routed = version
        return request

    async def _forward(self, call: RequestContext, request: Request) -> bytes:
        """Balance and forward; a shadow copy watches the answer when the policy asks for one."""
        pool = self.router.pool()
        timeout = call.timeout_s or self.default_timeout
        policy = call.policy
        # NOTE: a shadow copy would write its outputs into the caller's regions too.
        if policy is None or call.regions or not should_shadow(policy, self.rng,
                                                                call.routed or ""):
            return await self.forward(pool, call.model, "ModelInfer", request, timeout, call)
        primary = asyncio.ensure_future(
            self.forward(pool, call.model, "ModelInfer", request, timeout, call))
        target = policy.shadow_version or ""
        self.shadow.send(call.model, target, detached(rewrite.with_version(request, target)),
                         primary)
        return await primary

    def _finish(self, call: RequestContext, answer: bytes | None) -> None:
        """Give back what the request held; count, record, trace and log it, once each."""
        self.quotas.release(call.ticket)
        self.admission.leave()
        self.metrics.in_flight_value.inc(-1)
        label = self.label(call.model, call.principal is not None, call.code)
        call.elapsed = time.perf_counter() - call.started
        code = call.code.name
        self.metrics.observe(label, call.protocol, code, call.elapsed)
        # NOTE: routed requests only: auth, quota and admission failures are no version's.
        if self.answers is not None and call.routed is not None and (
                call.policy is not None or self.record_all):
            self.answers.record(call.id, call.model, call.routed, code, call.elapsed, answer)
        if call.span is not None:
            if call.endpoint:
                call.span.set_attribute("upstream.address", call.endpoint)
            tracing.end(call.span, code)
        if self.request_log is not None:
            self.request_log.observe(call.id, call.model, call.version, call.protocol, code,
                                     call.elapsed)

    def admit(self, headers: Headers, model: str | None, admin: bool = False) -> Principal:
        """The auth stage: the caller, if it may make this call."""
        try:
            principal = self.auth.authenticate(headers.get("authorization"))
            self.auth.authorize(principal, model, admin)
        except TensorgateError as exc:
            self.metrics.auth_failures.labels(exc.code.name).inc()
            raise
        return principal

    def quota(self, principal: Principal, model: str) -> Ticket:
        """The quota stage: a ticket to give back when the request is done."""
        try:
            return self.quotas.admit(principal)
        except QuotaExceeded as exc:
            self.metrics.quota_rejections.labels(self.label(model, True, exc.code),
                                                 exc.limit).inc()
            raise

    async def _shadow_call(self, model: str, version: str, request: Request,
                           timeout: float) -> bytes:
        return await self.forward(self.router.pool(), model, "ModelInfer", request,
                                  timeout)

    async def ask(self, method: str, request: bytes, model: str = "", version: str = "",
                  headers: Headers = NO_HEADERS, access: Access = "key") -> bytes:
        """A control-plane call (metadata, config, statistics, index) to a worker of the model.

        Without a model (statistics of all models), the caller must be allowed every model.
        """
        if access != "open":
            principal = self.admit(headers, model or None, access == "admin")
            if not model and principal.role != "admin" and not principal.may_use("*"):
                self.metrics.auth_failures.labels("PERMISSION_DENIED").inc()
                raise TensorgateError(grpc.StatusCode.PERMISSION_DENIED,
                                      "this key may use only some models: name one")
        if method == "RepositoryIndex":
            admitted = [e for e in self.router.endpoints if e.admitted]
            if len(admitted) > 1:
                return await repository_index.gather(admitted, request, self.default_timeout)
        pool = self.router.pool()
        return await self.forward(pool, model, method, request, self.default_timeout)

    async def broadcast(self, method: str, request: bytes, model: str,
                        headers: Headers = NO_HEADERS) -> bytes:
        """A repository change (load, unload) that every admitted worker must make; admin only.

        The change is recorded in the registry's audit log, with its outcome, as the caller.
        """
        principal = self.admit(headers, None, admin=True)
        endpoints = [e for e in self.router.endpoints if e.admitted]
        if not endpoints:
            raise unavailable(f"{method} of model '{model}': no healthy runtime worker")
        answers = await asyncio.gather(
            *(e.upstream.call(method, request, self.default_timeout) for e in endpoints),
            return_exceptions=True)
        failures = [a for a in answers if isinstance(a, BaseException)]
        outcome = {"workers": len(endpoints), "failed": [str(f) for f in failures]}
        if self.audit is not None:
            await self.audit(principal.subject, f"repository.{method}", model, outcome)
        if failures:
            first = failures[0]
            raise first if isinstance(first, TensorgateError) else unavailable(str(first))
        answer = answers[0]
        assert isinstance(answer, bytes)
        return answer

    async def ready(self) -> bool:
        """Ready when at least one admitted runtime worker says it is, and not draining."""
        if self.admission.draining:
            return False
        for endpoint in self.router.endpoints:
            if not endpoint.admitted:
                continue
            try:
                answer = await endpoint.upstream.call("ServerReady", b"", 2.0)
            except TensorgateError:
                continue
            if pb.ServerReadyResponse.FromString(answer).ready:
                return True
        return False

    async def close(self) -> None:
        await self.shadow.close()
        self.quotas.close()
