"""The options of every gRPC server tensorgate runs: message sizes and connection limits."""

from __future__ import annotations

from common.settings import GrpcSettings

#: grpc core's "never" for a duration option.
NEVER_MS = 2**31 - 1


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000)) if seconds > 0 else NEVER_MS


def server_options(limits: GrpcSettings, max_message_bytes: int,
                   reuse_port: bool = False) -> list[tuple[str, int]]:
    """`grpc.aio.server(options=...)`: grpc core checks the receive limit on the message as
    decompressed, so a small gzip body cannot inflate past it."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_connection_idle_ms", _ms(limits.idle_timeout_s)),
        ("grpc.max_connection_age_ms", _ms(limits.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", _ms(limits.connection_age_grace_s)),
        ("grpc.keepalive_time_ms", _ms(limits.keepalive_s)),
        ("grpc.keepalive_timeout_ms", _ms(limits.keepalive_timeout_s)),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(limits.min_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", limits.max_ping_strikes),
        ("grpc.max_concurrent_streams", limits.max_streams),
        ("grpc.server_handshake_timeout_ms", _ms(limits.handshake_timeout_s)),
    ]
    if limits.max_connections > 0:
        options.append(("grpc.max_allowed_incoming_connections", limits.max_connections))
    return options
