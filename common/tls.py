"""TLS material from PEM files: server and client contexts for the lane, gRPC credentials.

Read once at start-up; a missing or unreadable file is a configuration error naming it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from common.model_config import ConfigError


def read_pem(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be read: {exc.strerror}") from None


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A server context; with client_ca, a client certificate signed by it is required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            context.load_verify_locations(str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS certificate {cert} / key {key} / CA {client_ca}: {exc}") from None
    return context


def client_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A client context trusting `ca` (the system's CAs when None), with an optional client
    certificate for mTLS."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        if ca is not None:
            context.load_verify_locations(str(ca))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS CA {ca} / client certificate {cert}: {exc}") from None
    return context


def grpc_server_credentials(cert: Path, key: Path,
                            client_ca: Path | None) -> grpc.ServerCredentials:
    pair = (read_pem(key, "TLS key"), read_pem(cert, "TLS certificate"))
    roots = read_pem(client_ca, "client CA") if client_ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots,
                                       require_client_auth=client_ca is not None)


def grpc_channel_credentials(ca: Path | None, cert: Path | None,
                             key: Path | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "CA") if ca else None,
        private_key=read_pem(key, "TLS key") if key else None,
        certificate_chain=read_pem(cert, "TLS certificate") if cert else None)
