"""The gateway's data path, in order: auth → quota → route → split → balance → forward → shadow.

Knows nothing of HTTP or gRPC. Status and latency are recorded once per request, in one `finally`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import grpc
from opentelemetry.trace import Span

from common import tracing
from common.errors import TensorgateError, unavailable
from common.policy import Principal, Snapshot
from common.proto import grpc_service_pb2 as pb
from common.settings import GatewaySettings
from gateway import repository_index, rewrite, split
from gateway.admission import Admission
from gateway.answers import AnswerLog
from gateway.auth import Authenticator
from gateway.forward import Forward
from gateway.metrics import GatewayMetrics
from gateway.quota import QuotaExceeded, Quotas, Ticket
from gateway.request_log import request_log
from gateway.route import Router
from gateway.shadow import Shadow, should_shadow

Headers = Mapping[str, str]  # HTTP headers or gRPC metadata, names in lower case
#: The model label of a request whose caller was refused, or whose model is not a served one.
OTHER = "_other"
#: Models labelled by name after answering OK without the registry naming them (no registry).
MAX_ANSWERED = 256
_NO_HEADERS: Headers = {}
#: audit(actor, action, target, after): record an administrative change.
Audit = Callable[[str, str, str, Any], Awaitable[None]]
#: Who may make a control-plane call: anyone (health), any key, or an admin key.
Access = Literal["open", "key", "admin"]
#: A request still to be read (HTTP): called once the caller is admitted, it returns the
#: serialized ModelInferRequest, its id ("" for none) and its deadline in seconds (None: default).
Loader = Callable[[], Awaitable[tuple[bytes, str, float | None]]]


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

    async def infer(self, request: bytes | Loader, model: str, version: str,
                    timeout: float | None, protocol: str, headers: Headers = _NO_HEADERS,
                    request_id: str = "") -> bytes:
        """Forward a serialized ModelInferRequest; the answer's bytes come back untouched.

        A request without an id gets one, which the runtime echoes in the answer's `id`.
        A Loader is called only after admission, auth and quota passed on the headers.
        """
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        answer: bytes | None = None
        served: list[str] = []  # the version routed to, once routing happened
        admitted = False
        self.metrics.in_flight.inc()
        span: Span | None = None
        if isinstance(request, bytes):
            request, request_id, span = self._begin(request, model, version, protocol, headers,
                                                    request_id)
        try:
            # NOTE: sheds past max_in_flight, counted even then; that is before auth, so only a
            # served model's name may label the count (looked up only when it will be shed).
            shed = self.admission.in_flight >= self.admission.limit
            self.admission.enter(model if not shed or self.served(model) else OTHER)
            principal = self.admit(headers, model)
            admitted = True
            ticket = self.quota(principal, model)
            try:
                if not isinstance(request, bytes):
                    # NOTE: read, inflate and parse only now: a caller refused on its headers
                    # costs no more than its headers.
                    request, request_id, timeout = await request()
                    request, request_id, span = self._begin(request, model, version, protocol,
                                                            headers, request_id)
                answer = await self.serve(request, model, version, principal, headers,
                                          timeout or self.default_timeout, served)
                return answer
            finally:
                self.quotas.release(ticket)
        except TensorgateError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self.admission.leave()
            self.metrics.in_flight.dec()
            label = self.label(model, admitted, code)
            elapsed = time.perf_counter() - started
            self.metrics.observe(label, protocol, code.name, elapsed)
            # NOTE: routed requests only: auth, quota and admission failures are no version's.
            if self.answers is not None and served:
                self.answers.record(request_id, model, served[0], code.name, elapsed, answer)
            if span is not None:
                tracing.end(span, code.name)
            if self.request_log is not None:
                self.request_log.observe(request_id, model, version, protocol, code.name,
                                         elapsed)

    def _begin(self, request: bytes, model: str, version: str, protocol: str, headers: Headers,
               request_id: str) -> tuple[bytes, str, Span | None]:
        """The request with its id (a fresh one if it has none) and, when tracing, its span."""
        if not request_id:
            request_id = f"{self._id_prefix}-{next(self._ids)}"
            request = rewrite.with_id(request, request_id)
        span, request = self._trace(request, model, version, protocol, headers, request_id)
        return request, request_id, span

    @staticmethod
    def _trace(request: bytes, model: str, version: str, protocol: str, headers: Headers,
               request_id: str) -> tuple[Span | None, bytes]:
        """With tracing on, the request's span, and the request carrying its traceparent."""
        tracer = tracing.tracer()
        if tracer is None:
            return None, request
        span, traceparent = tracing.start_request(
            tracer, f"infer {model}", headers,
            {"model": model, "model.version": version, "protocol": protocol,
             "request.id": request_id})
        return span, rewrite.with_parameter(request, tracing.TRACEPARENT, traceparent)

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

    async def serve(self, request: bytes, model: str, version: str, principal: Principal,
                    headers: Headers, timeout: float, served: list[str]) -> bytes:
        """Route and split, then balance and forward; a shadow copy watches the answer.

        Appends the version routed to onto `served` ("": the runtime's default).
        """
        snapshot = self.snapshot()
        policy = snapshot.traffic.get(model)
        if policy is None:
            if not version and model in snapshot.production:
                version = snapshot.production[model]
                request = rewrite.with_version(request, version)
            if self.record_all:
                served.append(version)
            pool = self.router.pool(model, version)
            return await self.forward(pool, model, "ModelInfer", request, timeout)
        if not version:
            version = self.splitter.choose(policy, split.subject_of(policy, principal, headers))
            request = rewrite.with_version(request, version)
        served.append(version)
        pool = self.router.pool(model, version)
        if not should_shadow(policy, self.rng, version):
            return await self.forward(pool, model, "ModelInfer", request, timeout)
        primary = asyncio.ensure_future(self.forward(pool, model, "ModelInfer", request, timeout))
        target = policy.shadow_version or ""
        self.shadow.send(model, target, rewrite.with_version(request, target), primary)
        return await primary

    async def _shadow_call(self, model: str, version: str, request: bytes,
                           timeout: float) -> bytes:
        return await self.forward(self.router.pool(model, version), model, "ModelInfer", request,
                                  timeout)

    async def ask(self, method: str, request: bytes, model: str = "", version: str = "",
                  headers: Headers = _NO_HEADERS, access: Access = "key") -> bytes:
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
        pool = self.router.pool(model, version)
        return await self.forward(pool, model, method, request, self.default_timeout)

    async def broadcast(self, method: str, request: bytes, model: str,
                        headers: Headers = _NO_HEADERS) -> bytes:
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
