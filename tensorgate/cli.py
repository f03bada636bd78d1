"""The `tensorgate` command: `serve` (gateway + runtime); `gateway` and `runtime`, one role each."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from common import logs, tls, tracing
from common.model_config import ConfigError
from common.registry import default_registry_path
from common.settings import (
    AuthSettings,
    GatewaySettings,
    GrpcSettings,
    RuntimeSettings,
    TlsSettings,
    default_threads,
    from_json,
)
from tensorgate import ab, admin, edge, health, models_cli, mps

LOG_FORMATS = ("text", "json")
log = logging.getLogger("tensorgate")


def _triton_metrics_arg(parser: argparse.ArgumentParser, default: bool) -> None:
    parser.add_argument("--triton-metrics", action=argparse.BooleanOptionalAction,
                        default=default,
                        help="also export Triton's metric names, nv_inference_* and nv_gpu_* "
                             + ("(on; --no-triton-metrics turns them off)" if default
                                else "(off; --triton-metrics turns them on)"))


def _default(value: float, special: float | None = None, meaning: str = "") -> str:
    """A default for a help text: '(5)'; with what a special value means, '(5; 0: off)'."""
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    if special is None:
        return f"({shown})"
    return f"({shown}: {meaning})" if value == special else f"({shown}; {special:g}: {meaning})"


def _gateway_args(parser: argparse.ArgumentParser) -> None:
    # NOTE: every default comes from the settings dataclasses, so each is written once.
    d = GatewaySettings()
    parser.add_argument("--host", default=d.host, help=f"address to listen on ({d.host})")
    parser.add_argument("--http-port", type=int, default=d.http_port,
                        help=f"HTTP port ({d.http_port})")
    parser.add_argument("--grpc-port", type=int, default=d.grpc_port,
                        help=f"gRPC port ({d.grpc_port})")
    parser.add_argument("--metrics-port", type=int, default=d.metrics_port,
                        help=f"Prometheus /metrics port {_default(d.metrics_port, -1, 'off')}")
    _triton_metrics_arg(parser, d.triton_metrics)
    parser.add_argument("--registry", type=Path, metavar="PATH",
                        help="the registry database: keys, traffic policies, audit log "
                             "(tensorgate.db beside the model repository)")
    parser.add_argument("--trace-exporter", choices=tracing.EXPORTERS,
                        help="turn OpenTelemetry tracing on, exporting to the console or OTLP "
                             "(OTEL_EXPORTER_OTLP_ENDPOINT); off by default")
    parser.add_argument("--record-answers", choices=("ab", "all", "off"),
                        default=d.record_answers,
                        help="answers kept for `tensorgate ab report`: of models with a traffic "
                             f"policy (ab), of every model (all), or none (off); "
                             f"{d.record_answers} by default")
    parser.add_argument("--feedback-per-caller", type=int, default=d.feedback_per_caller,
                        metavar="ROWS", help="feedback rows kept per key and model; its oldest "
                        f"go first ({d.feedback_per_caller})")
    parser.add_argument("--feedback-max-rows", type=int, default=d.feedback_max_rows,
                        metavar="ROWS", help="feedback rows kept in all; past it feedback is "
                        f"refused ({d.feedback_max_rows})")
    parser.add_argument("--answers-max-rows", type=int, default=d.answers_max_rows,
                        metavar="ROWS",
                        help=f"answers kept in all; the oldest go first ({d.answers_max_rows})")
    parser.add_argument("--log-sample", type=float, default=d.log_sample, metavar="SHARE",
                        help=f"log one JSON line for this share of requests ({d.log_sample:g})")
    parser.add_argument("--log-slow-ms", type=float, default=d.log_slow_ms, metavar="MS",
                        help="log one JSON line for each request slower than this "
                             + _default(d.log_slow_ms, 0, "off"))
    parser.add_argument("--max-in-flight", type=_positive, default=d.max_in_flight, metavar="N",
                        help="inference requests one gateway process handles at once; more are "
                             f"refused at once with 429 / RESOURCE_EXHAUSTED ({d.max_in_flight})")
    parser.add_argument("--lane-arena-mb", type=_non_negative, default=d.lane_arena_mb,
                        metavar="MIB",
                        help="shared memory per gateway process for tensors sent by reference "
                             "to runtime workers on this host; full: 429 / RESOURCE_EXHAUSTED "
                             + _default(d.lane_arena_mb, 0, "all by value"))
    _drain_arg(parser, d.drain_timeout_s)
    _http_args(parser)
    _grpc_args(parser)
    _auth_args(parser)
    _tls_args(parser)


def _auth_args(parser: argparse.ArgumentParser) -> None:
    d = AuthSettings()
    auth = parser.add_argument_group("authentication")
    auth.add_argument("--no-auth", action="store_true",
                      help="serve every caller without a key (logs a warning)")
    auth.add_argument("--jwt-secret-file", type=Path, metavar="PATH",
                      help="accept HS256 JWTs signed with the secret in this file")
    auth.add_argument("--jwt-public-key", type=Path, action="append", default=[],
                      metavar="PEM", help="accept RS256/ES256 JWTs signed by this key; repeat")
    auth.add_argument("--jwks-file", type=Path, metavar="PATH",
                      help="accept JWTs signed by the keys of this JWKS file (re-read on change)")
    auth.add_argument("--jwt-issuer", help="the `iss` JWTs must carry")
    auth.add_argument("--jwt-audience", help="the `aud` JWTs must carry")
    auth.add_argument("--jwt-leeway", type=float, default=d.jwt_leeway_s,
                      help="clock skew allowed on `exp` and `nbf`, in seconds "
                           f"({d.jwt_leeway_s:g})")
    auth.add_argument("--jwt-rate", type=float, default=d.jwt_rate,
                      help="requests per second allowed to each JWT subject "
                           + _default(d.jwt_rate, 0, "no limit"))
    auth.add_argument("--jwt-burst", type=int, default=d.jwt_burst,
                      help="bucket size of each JWT subject "
                           + _default(d.jwt_burst, 0, "max(1, rate)"))
    auth.add_argument("--jwt-concurrency", type=int, default=d.jwt_concurrency,
                      help="requests in flight allowed to each JWT subject "
                           + _default(d.jwt_concurrency, 0, "no limit"))


def _tls_args(parser: argparse.ArgumentParser) -> None:
    secure = parser.add_argument_group("TLS")
    secure.add_argument("--tls-cert", type=Path, help="serve HTTPS and gRPC over TLS")
    secure.add_argument("--tls-key", type=Path, help="the private key of --tls-cert")
    secure.add_argument("--tls-client-ca", type=Path,
                     help="require client certificates signed by this CA (mTLS)")
    secure.add_argument("--runtime-tls-ca", type=Path,
                     help="connect to runtime workers over TLS, trusting this CA")
    secure.add_argument("--runtime-tls-cert", type=Path,
                     help="the client certificate shown to runtime workers (mTLS)")
    secure.add_argument("--runtime-tls-key", type=Path, help="the key of --runtime-tls-cert")


def _http_args(parser: argparse.ArgumentParser) -> None:
    d = GatewaySettings()
    http = parser.add_argument_group("HTTP clients (per gateway process)")
    http.add_argument("--http-header-timeout", type=_seconds, default=d.http_header_timeout_s,
                      metavar="SECONDS", help="a request's line and headers must arrive within "
                      "this of its first byte, else 408 and the connection closed "
                      f"({d.http_header_timeout_s:g})")
    http.add_argument("--http-body-timeout", type=_seconds, default=d.http_body_timeout_s,
                      metavar="SECONDS", help="a request's body must arrive within this of its "
                      f"headers ({d.http_body_timeout_s:g})")
    http.add_argument("--http-keep-alive", type=_seconds, default=d.http_keep_alive_s,
                      metavar="SECONDS", help="close a connection silent this long, before or "
                      f"between requests ({d.http_keep_alive_s:g})")
    http.add_argument("--http-max-header-bytes", type=_positive, default=d.http_max_header_bytes,
                      metavar="BYTES", help="largest request line plus headers; beyond it 431 "
                      f"({d.http_max_header_bytes})")
    http.add_argument("--http-max-connections", type=_positive, default=d.http_max_connections,
                      metavar="N", help="open HTTP connections; one more is answered 503 and "
                      f"closed ({d.http_max_connections})")


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text}")
    return value


def _grpc_args(parser: argparse.ArgumentParser) -> None:
    d = GrpcSettings()
    group = parser.add_argument_group("gRPC connections")
    group.add_argument("--grpc-idle-timeout", type=float, default=d.idle_timeout_s,
                       metavar="SECONDS", help="close a gRPC connection with no call for this "
                       "long; clients reconnect on their next call "
                       f"({d.idle_timeout_s:g}; 0: never)")
    group.add_argument("--grpc-max-connection-age", type=float, default=d.max_connection_age_s,
                       metavar="SECONDS", help="close every gRPC connection after this long, "
                       f"letting calls in flight finish ({d.max_connection_age_s:g}; 0: never)")
    group.add_argument("--grpc-max-streams", type=_positive, default=d.max_streams,
                       metavar="N", help=f"calls at once on one gRPC connection ({d.max_streams})")
    group.add_argument("--grpc-max-connections", type=int, default=d.max_connections,
                       metavar="N", help="gRPC connections one gateway process holds at once "
                       f"({d.max_connections}; 0: no limit)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _drain_arg(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument("--drain-timeout", type=float, default=default, metavar="SECONDS",
                        help="on SIGTERM, how long requests in flight and queued may take to "
                             f"finish before the process exits ({default:g})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorgate", description=__doc__)
    # NOTE: defaults from the environment, which main() sets: child processes inherit both.
    parser.add_argument("--log-level", default=os.environ.get("TENSORGATE_LOG_LEVEL", "INFO"),
                        help="DEBUG, INFO, WARNING, ERROR (INFO)")
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        default=os.environ.get("TENSORGATE_LOG_FORMAT", "text"),
                        help="text, or one JSON object per line (text); before or after the "
                             "command")
    commands = parser.add_subparsers(dest="command", required=True)
    repository = RuntimeSettings.model_repository
    serve = commands.add_parser("serve", help="serve a model repository (gateway + runtime)")
    serve.add_argument("--model-repository", type=Path, default=repository,
                       help=f"the model repository (./{repository})")
    serve.add_argument("--threads", type=int, default=default_threads(),
                       help="compute threads, shared by the runtime workers (all cores)")
    serve.add_argument("--runtime-workers", type=int, default=1,
                       help="local runtime worker processes; one that dies is restarted (1)")
    serve.add_argument("--gateway-processes", type=int, default=default_threads(),
                       help="gateway processes sharing the ports (one per core)")
    serve.add_argument("--mps", choices=mps.MODES, default="auto",
                       help="CUDA MPS for 2 or more runtime workers: auto starts a daemon of "
                            "serve's own where nvidia-cuda-mps-control and a GPU are found, on "
                            "wherever the program is, off never (auto)")
    _gateway_args(serve)
    gateway = commands.add_parser("gateway", help="run only the gateway")
    gateway.add_argument("--model-repository", type=Path, default=repository,
                         help="the model repository on this host: edge bundles are built from "
                              f"it, and the default registry is beside it (./{repository})")
    gateway.add_argument("--runtime", action="append", default=[], metavar="ADDRESS",
                         help="a runtime worker's lane (HOST:PORT or unix:PATH), or "
                         "grpc://HOST:PORT for any OIP gRPC server; repeat for several "
                         f"({' '.join(GatewaySettings.runtime_endpoints)})")
    gateway.add_argument("--processes", type=int, default=1,
                         help="gateway processes sharing the ports (1)")
    gateway.add_argument("--reuse-port", action="store_true",
                         help="let sibling processes share the ports (SO_REUSEPORT)")
    gateway.add_argument("--settings-file", type=Path, help=argparse.SUPPRESS)
    _gateway_args(gateway)
    _runtime_args(commands.add_parser("runtime", help="run only a runtime worker"))
    admin.add_commands(commands)
    edge.add_commands(commands)
    models_cli.add_commands(commands)
    ab.add_commands(commands)
    health.add_commands(commands)
    for command in commands.choices.values():
        _log_args(command)
    return parser


def _runtime_args(runtime: argparse.ArgumentParser) -> None:
    d = RuntimeSettings()
    runtime.add_argument("--model-repository", type=Path, default=d.model_repository,
                         help=f"the model repository (./{d.model_repository})")
    runtime.add_argument("--listen", default=d.listen,
                         help=f"gRPC address: HOST:PORT or unix:PATH ({d.listen})")
    runtime.add_argument("--lane", default=d.lane,
                         help=f"the gateway's lane: HOST:PORT or unix:PATH ({d.lane})")
    runtime.add_argument("--threads", type=int, default=d.threads,
                         help="compute threads (all cores)")
    runtime.add_argument("--inline-compute-us", type=int, default=d.inline_compute_us,
                         help="models whose batches take less than this run on the event loop "
                              f"thread instead of an executor thread ({d.inline_compute_us}; "
                              "0: never)")
    runtime.add_argument("--metrics-port", type=int, default=d.metrics_port,
                         help="Prometheus /metrics port, on --listen's host "
                              + _default(d.metrics_port, -1, "off"))
    _triton_metrics_arg(runtime, d.triton_metrics)
    runtime.add_argument("--trace-exporter", choices=tracing.EXPORTERS,
                         help="turn OpenTelemetry tracing on (console or otlp)")
    runtime.add_argument("--registry", type=Path, metavar="PATH",
                         help="reload a model when its ready versions change in this registry")
    _drain_arg(runtime, d.drain_timeout_s)
    runtime.add_argument("--tls-cert", type=Path, help="serve the lane and gRPC over TLS")
    runtime.add_argument("--tls-key", type=Path, help="the private key of --tls-cert")
    runtime.add_argument("--tls-client-ca", type=Path,
                         help="require client certificates signed by this CA (mTLS)")


def _log_args(parser: argparse.ArgumentParser) -> None:
    """--log-level and --log-format after the command (and its subcommands) too; SUPPRESS keeps
    the value given before it (or the default) when they are not repeated there."""
    parser.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _log_args(sub)


def gateway_settings(args: argparse.Namespace, endpoints: tuple[str, ...],
                     reuse_port: bool = False) -> GatewaySettings:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if bool(args.runtime_tls_cert) != bool(args.runtime_tls_key):
        raise ConfigError("--runtime-tls-cert and --runtime-tls-key go together")
    secret = None
    if args.jwt_secret_file:
        secret = tls.read_pem(args.jwt_secret_file, "JWT secret file").decode().strip()
    auth = AuthSettings(enabled=not args.no_auth, jwt_secret=secret,
                        jwt_public_keys=tuple(args.jwt_public_key), jwks_file=args.jwks_file,
                        jwt_issuer=args.jwt_issuer, jwt_audience=args.jwt_audience,
                        jwt_leeway_s=args.jwt_leeway, jwt_rate=args.jwt_rate,
                        jwt_burst=args.jwt_burst, jwt_concurrency=args.jwt_concurrency)
    transport = TlsSettings(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca,
                            upstream_ca=args.runtime_tls_ca, upstream_cert=args.runtime_tls_cert,
                            upstream_key=args.runtime_tls_key)
    registry = args.registry or default_registry_path(args.model_repository)
    limits = GrpcSettings(idle_timeout_s=args.grpc_idle_timeout,
                          max_connection_age_s=args.grpc_max_connection_age,
                          max_streams=args.grpc_max_streams,
                          max_connections=args.grpc_max_connections)
    return GatewaySettings(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                           metrics_port=args.metrics_port, runtime_endpoints=endpoints,
                           triton_metrics=args.triton_metrics,
                           reuse_port=reuse_port, registry_path=registry, auth=auth,
                           tls=transport, model_repository=args.model_repository,
                           max_in_flight=args.max_in_flight, drain_timeout_s=args.drain_timeout,
                           lane_arena_mb=args.lane_arena_mb,
                           log_sample=args.log_sample, log_slow_ms=args.log_slow_ms,
                           trace_exporter=args.trace_exporter,
                           record_answers=args.record_answers,
                           feedback_per_caller=args.feedback_per_caller,
                           feedback_max_rows=args.feedback_max_rows,
                           answers_max_rows=args.answers_max_rows,
                           http_header_timeout_s=args.http_header_timeout,
                           http_body_timeout_s=args.http_body_timeout,
                           http_keep_alive_s=args.http_keep_alive,
                           http_max_header_bytes=args.http_max_header_bytes,
                           http_max_connections=args.http_max_connections, grpc=limits)


def run(args: argparse.Namespace) -> int:
    if args.command in edge.COMMANDS:
        return edge.run(args)
    if args.command in models_cli.COMMANDS:
        return models_cli.run(args)
    if args.command in admin.COMMANDS:
        return admin.run(args)
    if args.command in ab.COMMANDS:
        return ab.run(args)
    if args.command in health.COMMANDS:
        return health.run(args, build_parser().parse_args)
    from tensorgate import bootstrap, lifecycle, ports, roles, supervisor

    if args.command == "runtime":
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        return roles.run_runtime(RuntimeSettings(
            model_repository=args.model_repository, listen=args.listen, lane=args.lane,
            threads=args.threads, inline_compute_us=args.inline_compute_us,
            metrics_port=args.metrics_port, drain_timeout_s=args.drain_timeout,
            triton_metrics=args.triton_metrics, tls_cert=args.tls_cert, tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            registry_path=args.registry, trace_exporter=args.trace_exporter))
    if args.command == "gateway":
        if args.settings_file:
            settings = from_json(GatewaySettings, args.settings_file.read_text())
            return roles.run_gateway(settings)
        endpoints = tuple(args.runtime) or GatewaySettings.runtime_endpoints
        settings = gateway_settings(args, endpoints, args.reuse_port)
        if args.reuse_port:  # sharing with processes started elsewhere was asked for
            bootstrap.announce_auth(settings)
            return roles.run_gateway(settings)
        with ports.claim(settings, reserve=args.processes > 1) as held:
            bootstrap.announce_auth(settings)
            if args.processes > 1:
                return supervisor.gateways(settings, args.processes, held)
            return roles.run_gateway(settings)
    settings = gateway_settings(args, ())
    sharing = mps.plan(args.mps, max(1, args.runtime_workers), os.environ)
    # NOTE: the ports first: a clash stops us before the first admin key or any child exists.
    with ports.claim(settings, reserve=True) as held:
        bootstrap.announce_auth(settings, create_admin=True)
        if settings.registry_path is not None:
            lifecycle.sync_on_start(settings.registry_path, args.model_repository)
        _warn_if_empty(args.model_repository)
        return supervisor.serve(args.model_repository, args.threads,
                                max(1, args.gateway_processes), settings,
                                max(1, args.runtime_workers), held, sharing)


def _warn_if_empty(repository: Path) -> None:
    """A repository with no model folder serves nothing; say so rather than start quietly."""
    if repository.is_dir() and not any(
            p.is_dir() and not p.name.startswith(".") for p in repository.iterdir()):
        log.warning("the model repository %s holds no models: every inference will be refused "
                    "with NOT_FOUND until one is added (`tensorgate models register`)",
                    repository)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    os.environ["TENSORGATE_LOG_LEVEL"], os.environ["TENSORGATE_LOG_FORMAT"] = (
        args.log_level, args.log_format)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"tensorgate: configuration error: {exc}", file=sys.stderr)
        return 2
