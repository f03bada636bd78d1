"""The `tensorgate` command: `serve` (gateway + runtime); `gateway` and `runtime`, one role each."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common.model_config import ConfigError
from common.settings import GatewaySettings, RuntimeSettings, default_threads
from tensorgate import admin


def _gateway_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (8001)")
    parser.add_argument("--metrics-port", type=int, default=8002,
                        help="Prometheus /metrics port (8002; -1 turns it off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorgate", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository (gateway + runtime)")
    serve.add_argument("--model-repository", type=Path, default=Path("models"),
                       help="the model repository (./models)")
    serve.add_argument("--threads", type=int, default=default_threads(),
                       help="compute threads, shared by the runtime workers (all cores)")
    serve.add_argument("--runtime-workers", type=int, default=1,
                       help="local runtime worker processes; one that dies is restarted (1)")
    serve.add_argument("--gateway-processes", type=int, default=default_threads(),
                       help="gateway processes sharing the ports (one per core)")
    _gateway_args(serve)
    gateway = commands.add_parser("gateway", help="run only the gateway")
    gateway.add_argument("--runtime", action="append", default=[], metavar="ADDRESS",
                         help="a runtime worker's lane (HOST:PORT or unix:PATH), or "
                         "grpc://HOST:PORT for any OIP gRPC server; repeat for several")
    gateway.add_argument("--processes", type=int, default=1,
                         help="gateway processes sharing the ports (1)")
    gateway.add_argument("--reuse-port", action="store_true",
                         help="let sibling processes share the ports (SO_REUSEPORT)")
    _gateway_args(gateway)
    runtime = commands.add_parser("runtime", help="run only a runtime worker")
    runtime.add_argument("--model-repository", type=Path, default=Path("models"))
    runtime.add_argument("--listen", default="127.0.0.1:8011",
                         help="gRPC address: HOST:PORT or unix:PATH (127.0.0.1:8011)")
    runtime.add_argument("--lane", default="127.0.0.1:8012",
                         help="the gateway's lane: HOST:PORT or unix:PATH (127.0.0.1:8012)")
    runtime.add_argument("--threads", type=int, default=default_threads())
    runtime.add_argument("--inline-compute-us", type=int, default=200,
                         help="models whose batches take less than this run on the event loop "
                              "thread instead of an executor thread (200; 0: never)")
    runtime.add_argument("--tls-cert", type=Path, help="serve the lane and gRPC over TLS")
    runtime.add_argument("--tls-key", type=Path, help="the private key of --tls-cert")
    runtime.add_argument("--tls-client-ca", type=Path,
                         help="require client certificates signed by this CA (mTLS)")
    admin.add_commands(commands)
    return parser


def gateway_settings(args: argparse.Namespace, endpoints: tuple[str, ...],
                     reuse_port: bool = False) -> GatewaySettings:
    return GatewaySettings(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                           metrics_port=args.metrics_port, runtime_endpoints=endpoints,
                           reuse_port=reuse_port)


def run(args: argparse.Namespace) -> int:
    if args.command in admin.COMMANDS:
        return admin.run(args)
    from tensorgate import roles, supervisor

    if args.command == "runtime":
        return roles.run_runtime(RuntimeSettings(
            model_repository=args.model_repository, listen=args.listen, lane=args.lane,
            threads=args.threads, inline_compute_us=args.inline_compute_us,
            tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca))
    if args.command == "gateway":
        endpoints = tuple(args.runtime) or ("127.0.0.1:8012",)
        if args.processes > 1:
            return supervisor.gateways(gateway_settings(args, endpoints), args.processes)
        return roles.run_gateway(gateway_settings(args, endpoints, args.reuse_port))
    return supervisor.serve(args.model_repository, args.threads,
                            max(1, args.gateway_processes), gateway_settings(args, ()),
                            max(1, args.runtime_workers))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except ConfigError as exc:
        print(f"tensorgate: configuration error: {exc}", file=sys.stderr)
        return 2
