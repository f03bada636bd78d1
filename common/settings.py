"""One typed settings object per service, built once at start-up from the command line."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
S = TypeVar("S")


def default_threads() -> int:
    """The cores this process may use (its CPU affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class GrpcSettings:
    """How long a gRPC connection may idle or live, and how much one caller may hold open."""

    #: Close a connection with no call in flight for this long (GOAWAY; clients reconnect on
    #: their next call), in seconds; 0: never.
    idle_timeout_s: float = 300.0
    #: Close every connection after this long (GOAWAY), so none is held forever, in seconds;
    #: 0: never. Calls in flight then get `connection_age_grace_s` to finish.
    max_connection_age_s: float = 3600.0
    connection_age_grace_s: float = 60.0
    #: Ping an idle peer this often, and drop it when no answer comes in `keepalive_timeout_s`
    #: (dead peers free their connection).
    keepalive_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    #: A client may ping at most this often while no data flows; `max_ping_strikes` pings more
    #: often than that close its connection (GOAWAY too_many_pings).
    min_ping_interval_s: float = 10.0
    max_ping_strikes: int = 2
    #: Calls at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    max_streams: int = 256
    #: Connections one process holds at once; more are refused at accept. 0: no limit.
    max_connections: int = 4096
    #: A new connection must finish its TLS and HTTP/2 handshake within this, in seconds.
    handshake_timeout_s: float = 10.0


@dataclass(frozen=True)
class RuntimeSettings:
    """A runtime worker: which models it serves, where it listens, how many threads compute."""

    model_repository: Path = Path("models")
    #: Where the worker serves OIP gRPC: "HOST:PORT" (port 0 picks one) or "unix:PATH".
    listen: str = "127.0.0.1:8011"
    #: Where it serves the gateway's lane (multiplexed frames): "HOST:PORT" or "unix:PATH".
    lane: str = "127.0.0.1:8012"
    #: Compute threads shared by all model instances of this worker.
    threads: int = field(default_factory=default_threads)
    #: Largest gRPC message accepted or sent, in bytes.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: A model whose batches take less than this (µs) runs them on the event loop thread:
    #: handing a batch to an executor thread and back costs more than such a model. 0: never.
    inline_compute_us: int = 200
    #: Serve Prometheus /metrics on this port (on --listen's host); -1: off. Under `serve` the
    #: workers write to the supervisor's multiprocess directory, served on its /metrics.
    metrics_port: int = -1
    #: Also count under Triton's metric names (nv_inference_*, nv_gpu_*).
    triton_metrics: bool = True
    #: OpenTelemetry exporter: "console", "otlp", or None (tracing off).
    trace_exporter: str | None = None
    #: The registry: a model whose set of ready versions changes there is reloaded (hot swap).
    registry_path: Path | None = None
    registry_refresh_s: float = 0.5
    #: Serve the lane and gRPC over TLS with this certificate and key; with tls_client_ca,
    #: require client certificates signed by it (the gateway's, for mTLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    #: On SIGTERM: readiness goes false, then after `drain_grace_s` the listeners close, and
    #: requests in flight and queued get up to `drain_timeout_s` in all to finish.
    drain_grace_s: float = 1.0
    drain_timeout_s: float = 30.0
    #: Connection limits and timeouts of its gRPC server.
    grpc: GrpcSettings = field(default_factory=GrpcSettings)


@dataclass(frozen=True)
class AuthSettings:
    """Who may call: API keys from the registry, JWTs checked with pyjwt."""

    #: Off only with an explicit `--no-auth`.
    enabled: bool = True
    #: HS256 shared secret, if JWTs signed that way are accepted.
    jwt_secret: str | None = None
    #: PEM public keys (RS256 / ES256) accepted for JWTs.
    jwt_public_keys: tuple[Path, ...] = ()
    #: A JWKS file, re-read when it changes.
    jwks_file: Path | None = None
    #: Required `iss` and `aud` claims, when set.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    #: Clock skew allowed on `exp` and `nbf`, in seconds.
    jwt_leeway_s: float = 30.0
    #: Claims that carry the role and the allowed models (a list of globs or one string).
    role_claim: str = "role"
    models_claim: str = "models"
    #: The quota of each JWT subject (requests/s, bucket, in flight); 0: no limit.
    jwt_rate: float = 0.0
    jwt_burst: int = 0
    jwt_concurrency: int = 0


@dataclass(frozen=True)
class TlsSettings:
    """TLS for the gateway's listeners, and for its connections to runtime workers."""

    cert: Path | None = None
    key: Path | None = None
    #: Require client certificates signed by this CA (mTLS).
    client_ca: Path | None = None
    #: Connect to runtime workers over TLS, trusting this CA; optional client certificate.
    upstream_ca: Path | None = None
    upstream_cert: Path | None = None
    upstream_key: Path | None = None


@dataclass(frozen=True)
class GatewaySettings:
    """A gateway process: its listening ports and the runtime workers it forwards to."""

    host: str = "0.0.0.0"
    #: HTTP/REST port (OIP + Triton extensions); 0 picks a free one.
    http_port: int = 8000
    #: gRPC port (inference.GRPCInferenceService); 0 picks a free one.
    grpc_port: int = 8001
    #: Prometheus /metrics port; -1 turns the metrics listener off.
    metrics_port: int = 8002
    #: Serve Triton's metric names (nv_inference_*, nv_gpu_*) beside ours; `serve` passes it
    #: on to its runtime workers.
    triton_metrics: bool = True
    #: Runtime workers' lane addresses ("HOST:PORT" or "unix:PATH"), or "grpc://HOST:PORT" for
    #: any OIP gRPC server (a runtime's gRPC port, or Triton).
    runtime_endpoints: tuple[str, ...] = ("127.0.0.1:8012",)
    #: Largest request or response body accepted, in bytes.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: Deadline applied to a forwarded request that carries none, in seconds.
    default_timeout_s: float = 60.0
    #: Share the HTTP and gRPC ports with sibling gateway processes (SO_REUSEPORT).
    reuse_port: bool = False
    #: The registry database (keys, traffic policies); None: no registry, no keys.
    registry_path: Path | None = None
    #: How often the gateway looks for a new registry generation, in seconds.
    registry_refresh_s: float = 0.5
    auth: AuthSettings = field(default_factory=AuthSettings)
    #: A file shared by sibling gateway processes so quotas hold per host; None: per process.
    quota_path: Path | None = None
    tls: TlsSettings = field(default_factory=TlsSettings)
    #: Active health checks of runtime workers: the probe interval, and the consecutive
    #: failures that eject a worker until a probe succeeds again.
    health_interval_s: float = 1.0
    eject_after_failures: int = 3
    #: How often a runtime address given as a DNS name is re-resolved, in seconds.
    dns_refresh_s: float = 5.0
    #: Log one JSON line for this share of requests (0: none), and for every request slower
    #: than log_slow_ms (0: off).
    log_sample: float = 0.0
    log_slow_ms: float = 0.0
    #: OpenTelemetry exporter: "console", "otlp", or None (tracing off).
    trace_exporter: str | None = None
    #: Which answers go to answers.db for `tensorgate ab report`: "ab" (models with a traffic
    #: policy), "all", or "off".
    record_answers: str = "ab"
    #: answers.db's bounds: feedback rows per caller (key or JWT subject) and model, its own
    #: oldest dropped past it; feedback rows in all, new feedback refused (RESOURCE_EXHAUSTED)
    #: past it; answers in all, the oldest dropped.
    feedback_per_caller: int = 100_000
    feedback_max_rows: int = 500_000
    answers_max_rows: int = 2_000_000
    #: The model repository on this host, for edge bundles (`/v2/models/{m}/versions/{v}/edge`);
    #: None: the gateway builds none.
    model_repository: Path | None = None
    #: Inference requests this process handles at once; beyond it, new ones are shed at once
    #: with RESOURCE_EXHAUSTED / 429 and Retry-After, never queued. At a few thousand requests
    #: per second per process, 512 is a tenth of a second of work: latency stays bounded.
    max_in_flight: int = 512
    #: On SIGTERM: readiness goes false, new connections are still taken for `drain_grace_s`
    #: (load balancers notice), then refused; requests in flight get up to `drain_timeout_s`.
    drain_grace_s: float = 1.0
    drain_timeout_s: float = 30.0
    #: HTTP clients: a request's line and headers must arrive within `http_header_timeout_s` of
    #: its first byte, its body within `http_body_timeout_s` of its headers (else 408 and the
    #: connection closed); a connection silent for `http_keep_alive_s`, before its first request
    #: or between requests, is closed.
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 60.0
    http_keep_alive_s: float = 5.0
    #: Largest HTTP request line plus headers, in bytes; beyond it: 431, connection closed.
    http_max_header_bytes: int = 64 * 1024
    #: Open HTTP connections per gateway process; one more is answered 503 and closed.
    http_max_connections: int = 4096
    #: Shared memory for tensors sent by reference to runtime workers on this host (unix
    #: lanes), per gateway process, in MiB; a request finding it full is refused with
    #: RESOURCE_EXHAUSTED / 429 and Retry-After. 0: every tensor by value.
    lane_arena_mb: int = 256
    #: Connection limits and timeouts of the gRPC listener.
    grpc: GrpcSettings = field(default_factory=GrpcSettings)


def to_json(settings: object) -> str:
    """A settings object as JSON, for a supervisor to hand to the processes it starts."""
    return json.dumps(asdict(settings), default=str)  # type: ignore[call-overload]


def from_json(kind: type[S], text: str) -> S:
    """The settings object `to_json` wrote; a field missing from the JSON keeps its default."""
    return _build(kind, json.loads(text))


def _build(kind: type[S], values: dict[str, Any]) -> S:
    hints = get_type_hints(kind)
    known = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    return kind(**{name: _convert(hints[name], value)
                   for name, value in values.items() if name in known})


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(hint, type) and is_dataclass(hint):
        return _build(hint, value)
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is tuple:
        return tuple(_convert(args[0], item) for item in value)
    if Path in args or hint is Path:
        return Path(value)
    return value
