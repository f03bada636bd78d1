"""gRPC connection limits: from the command line, through the supervisor's JSON, to grpc."""

from __future__ import annotations

from common.grpc_options import NEVER_MS, server_options
from common.settings import GatewaySettings, GrpcSettings, from_json, to_json
from tensorgate.cli import build_parser, gateway_settings


def test_the_flags_reach_the_settings_and_survive_the_supervisor() -> None:
    args = build_parser().parse_args([
        "gateway", "--no-auth", "--grpc-idle-timeout", "7.5", "--grpc-max-connection-age", "0",
        "--grpc-max-streams", "9", "--grpc-max-connections", "11"])
    settings = gateway_settings(args, ("127.0.0.1:1",))
    expected = GrpcSettings(idle_timeout_s=7.5, max_connection_age_s=0, max_streams=9,
                            max_connections=11)
    assert settings.grpc == expected
    assert from_json(GatewaySettings, to_json(settings)).grpc == expected


def test_the_settings_become_grpc_options() -> None:
    options = dict(server_options(GrpcSettings(idle_timeout_s=2, max_connection_age_s=0,
                                               max_streams=5, max_connections=0), 1234, True))
    assert options["grpc.max_connection_idle_ms"] == 2000
    assert options["grpc.max_connection_age_ms"] == NEVER_MS  # 0: never
    assert options["grpc.max_concurrent_streams"] == 5
    assert options["grpc.max_receive_message_length"] == 1234
    assert options["grpc.so_reuseport"] == 1
    assert "grpc.max_allowed_incoming_connections" not in options  # 0: no limit
    defaults = dict(server_options(GrpcSettings(), 1))
    assert defaults["grpc.max_allowed_incoming_connections"] == GrpcSettings().max_connections
