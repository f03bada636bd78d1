"""Locust users for tensorgate: HTTP (JSON and binary tensors) and gRPC (tritonclient), with tags
steady / ramp / spike / ab / mixed, inputs from each model's metadata, and SLO gates on exit.

    locust -f loadtest/locust/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -t 1m \
        --tags steady --p99-ms 50 --max-error-rate 0.001 --csv out/tg --html out/report.html
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# NOTE: locust puts only this folder on sys.path; the repository root makes `loadtest.` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gevent
import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, LoadTestShape, User, events, tag, task
from locust.exception import StopUser
from locust.runners import WorkerRunner

# NOTE: before any channel exists: grpcio must yield to gevent, or one call blocks every user.
grpc_gevent.init_gevent()

import tritonclient.grpc as tgrpc  # noqa: E402

from loadtest.locust import payloads, preflight, slo  # noqa: E402

log = logging.getLogger("tensorgate.locust")
VERSION_HEADER = "x-tensorgate-model-version"
#: Answers per version that served them, for the A/B check (summed on the master when
#: distributed).
OBSERVED: Counter[str] = Counter()
_HTTP: dict[str, payloads.Payload] = {}
_GRPC: dict[str, payloads.Payload] = {}
#: gRPC clients not closed yet: one left open to the garbage collector at interpreter exit
#: deadlocks grpcio's gevent integration, and the process never exits.
_CLIENTS: set[tgrpc.InferenceServerClient] = set()
#: Why users could not start (the first reason is logged); such a run exits 2.
_CANNOT_START: list[str] = []


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    # NOTE: on the parser itself, not a group: only it takes locust's `is_secret`.
    group = parser
    group.add_argument("--model", default="digits", help="the model to load (digits)")
    group.add_argument("--models", default="",
                       help="comma-separated models for the `mixed` tag (--model)")
    group.add_argument("--batch", type=int, default=1, help="rows per request (1)")
    group.add_argument("--http-encoding", choices=("both", "json", "binary"), default="both",
                       help="HTTP tensors as JSON, binary, or half and half (both)")
    group.add_argument("--grpc-address", default="",
                       help="gRPC HOST:PORT (the --host's host, port 8001)")
    group.add_argument("--api-key", default="", env_var="TENSORGATE_API_KEY", is_secret=True,
                       help="sent as `Authorization: Bearer KEY` (env TENSORGATE_API_KEY)")
    group.add_argument("--think-ms", type=float, default=0.0,
                       help="pause between one user's requests, ms (0: closed loop)")
    group.add_argument("--p99-ms", type=float, default=0.0,
                       help="fail the run when the p99 latency is over this, ms (0: off)")
    group.add_argument("--max-error-rate", type=float, default=-1.0,
                       help="fail the run when failures / requests is over this (-1: off)")
    group.add_argument("--ab-policy", default="",
                       help="`ab` tag: the split to expect, VERSION=WEIGHT,... e.g. 1=90,2=10")
    group.add_argument("--ab-tolerance", type=float, default=0.05,
                       help="`ab` tag: largest gap between observed and expected shares (0.05)")
    group.add_argument("--ab-subject-header", default="",
                       help="`ab` tag: send a fresh subject in this header per request, for "
                            "policies sticky on a header")


def _models(options: Any) -> list[str]:
    return [m.strip() for m in (options.models or options.model).split(",") if m.strip()]


def _headers(options: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {options.api_key}"} if options.api_key else {}


def _subject(options: Any, headers: dict[str, str]) -> dict[str, str]:
    if not options.ab_subject_header:
        return headers
    return {**headers, options.ab_subject_header: f"{random.getrandbits(64):016x}"}


class HttpInferUser(FastHttpUser):
    """OIP REST: JSON tensors and Triton's binary tensor extension."""

    def wait_time(self) -> float:
        return float(self.environment.parsed_options.think_ms) / 1000

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.options = options
        self.models = _models(options)
        self.base = _headers(options)
        self.json_headers = {**self.base, "content-type": "application/json"}
        try:
            self.payloads = {m: self._payload(m) for m in self.models}
        except Exception as exc:
            self.payloads = {}
            _cannot_start(self, f"HTTP metadata call: {exc}")

    def _payload(self, model: str) -> payloads.Payload:
        if model not in _HTTP:
            response = self.client.get(f"/v2/models/{model}", headers=self.base,
                                       name="/v2/models/[model] metadata")
            response.raise_for_status()
            _HTTP[model] = payloads.build(payloads.specs(response.json()), self.options.batch)
        return _HTTP[model]

    @tag("steady", "ramp", "spike", "ab")
    @task
    def infer(self) -> None:
        self._infer(self.models[0])

    @tag("mixed")
    @task
    def infer_mixed(self) -> None:
        self._infer(random.choice(self.models))

    def _infer(self, model: str) -> None:
        payload = self.payloads.get(model)
        if payload is None:  # on_start failed; the run is stopping
            raise StopUser()
        encoding = self.options.http_encoding
        binary = encoding == "binary" or (encoding == "both" and random.random() < 0.5)
        if binary:
            body = payload.binary_body
            headers = {**self.base, "content-type": "application/octet-stream",
                       "inference-header-content-length": str(payload.binary_json_size)}
        else:
            body, headers = payload.json_body, self.json_headers
        # NOTE: the stubs say str, but geventhttpclient sends bytes as they are, without a copy.
        with self.client.post(f"/v2/models/{model}/infer", data=body,  # type: ignore[arg-type]
                              headers=_subject(self.options, headers),
                              name=f"http {model} {'binary' if binary else 'json'}",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            version = response.headers.get(VERSION_HEADER)
            if version:
                OBSERVED[version] += 1
            response.success()


class GrpcInferUser(User):
    """OIP gRPC through tritonclient.grpc, reported to locust as request events."""

    def wait_time(self) -> float:
        return float(self.environment.parsed_options.think_ms) / 1000

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.options = options
        self.models = _models(options)
        self.headers = _headers(options)
        self.client = tgrpc.InferenceServerClient(options.grpc_address or _grpc_of(self.host))
        _CLIENTS.add(self.client)
        try:
            self.payloads = {m: self._payload(m) for m in self.models}
        except Exception as exc:
            self.payloads = {}
            _close(self.client)
            _cannot_start(self, f"gRPC metadata call: {exc}")

    def on_stop(self) -> None:
        _close(self.client)

    def _payload(self, model: str) -> payloads.Payload:
        if model not in _GRPC:
            metadata = self.client.get_model_metadata(model, headers=self.headers, as_json=True)
            _GRPC[model] = payloads.build(payloads.specs(metadata), self.options.batch)
        return _GRPC[model]

    @tag("steady", "ramp", "spike", "ab")
    @task
    def infer(self) -> None:
        self._infer(self.models[0])

    @tag("mixed")
    @task
    def infer_mixed(self) -> None:
        self._infer(random.choice(self.models))

    def _infer(self, model: str) -> None:
        payload = self.payloads.get(model)
        if payload is None:  # on_start failed; the run is stopping
            raise StopUser()
        started = time.perf_counter()
        error: Exception | None = None
        length = 0
        try:
            result = self.client.infer(model, payload.grpc_inputs,
                                       headers=_subject(self.options, self.headers))
            response = result.get_response()
            length = response.ByteSize()
            OBSERVED[response.model_version] += 1
        except Exception as exc:  # every failure is a failed request to locust
            error = exc
        self.environment.events.request.fire(
            request_type="grpc", name=f"grpc {model}", response_length=length,
            response_time=(time.perf_counter() - started) * 1000, exception=error, context={})


def _close(client: tgrpc.InferenceServerClient) -> None:
    if client in _CLIENTS:
        _CLIENTS.discard(client)
        client.close()


def _cannot_start(user: User, reason: str) -> None:
    """A user that cannot start stops the run (exit 2), rather than leave it to load nothing."""
    if not _CANNOT_START:
        log.error("users cannot start, stopping: %s", reason)
        # NOTE: from a greenlet of its own: quit() kills every user greenlet, this one included.
        gevent.spawn(user.environment.runner.quit)
    _CANNOT_START.append(reason)


@events.init.add_listener
def _preflight(environment: Any, **_: Any) -> None:
    """A headless run checks its key and models first, and exits 2 with the reason."""
    options = environment.parsed_options
    if options is None or not options.headless or options.worker or not environment.host:
        return
    reason = preflight.problem(environment.host, _models(options), _headers(options))
    if reason is not None:
        log.error("users cannot start: %s", reason)
        sys.exit(2)


def _grpc_of(host: str | None) -> str:
    """tensorgate's convention: gRPC on the port after HTTP's (8000 → 8001)."""
    url = urlsplit(host or "http://127.0.0.1:8000")
    return f"{url.hostname}:{(url.port or 8000) + 1}"


class ScenarioShape(LoadTestShape):
    """steady, ramp or spike from --tags, over -u users and -t run time."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner else None
        if options is None:
            return None
        total = float(options.run_time or 0)
        elapsed = self.get_run_time()
        if total and elapsed >= total:
            return None
        tags = set(options.tags or ())
        profile = next((p for p in ("spike", "ramp") if p in tags), "steady")
        users = int(options.num_users or 1)
        rate = float(options.spawn_rate or 1)
        wanted = slo.users_at(profile, elapsed, total, users)
        return wanted, (max(rate, users) if profile == "spike" else rate)


@events.report_to_master.add_listener
def _report(client_id: str, data: dict, **_: Any) -> None:
    data["tensorgate_versions"] = dict(OBSERVED)
    OBSERVED.clear()


@events.worker_report.add_listener
def _collect(client_id: str, data: dict, **_: Any) -> None:
    OBSERVED.update(data.get("tensorgate_versions", {}))


@events.quitting.add_listener
def _gate(environment: Any, **_: Any) -> None:
    """Set the exit status from the SLOs and the A/B split (on the master when distributed)."""
    for client in list(_CLIENTS):
        _close(client)
    if _CANNOT_START:
        environment.process_exit_code = 2
        return
    if isinstance(environment.runner, WorkerRunner):
        return
    options = environment.parsed_options
    total = environment.stats.total
    broken = slo.slo_violations(options.p99_ms, options.max_error_rate,
                                total.get_response_time_percentile(0.99) or 0.0,
                                total.num_requests, total.num_failures)
    if options.ab_policy:
        expected = slo.parse_policy(options.ab_policy)
        broken += slo.split_violations(expected, OBSERVED, options.ab_tolerance)
    if OBSERVED:
        shares = ", ".join(f"{v}: {n}" for v, n in sorted(OBSERVED.items()))
        log.info("answers by the version that served them: %s", shares)
    for line in broken:
        log.error("SLO not met: %s", line)
    gated = options.p99_ms > 0 or options.max_error_rate >= 0 or options.ab_policy
    if broken:
        environment.process_exit_code = 1
    elif gated:
        # NOTE: within --max-error-rate, a few failures must not fail the run as locust would.
        environment.process_exit_code = 0
        log.info("SLOs met")
