"""TLS and mTLS at the gateway's listeners and on its link to the runtime, with tritonclient."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gevent.ssl
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from common.model_config import ConfigError
from common.settings import AuthSettings, GatewaySettings, RuntimeSettings, TlsSettings
from gateway.app import Gateway
from runtime.app import Runtime, load_models
from tests.integration.conftest import ROOT, Background

Pem = tuple[Path, Path]  # certificate, key
# geventhttpclient (under tritonclient.http) still calls the deprecated ssl.match_hostname.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.match_hostname:DeprecationWarning")


@dataclass
class Pki:
    ca: Path
    server: Pem
    client: Pem
    stranger: Pem  # signed by another CA


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(directory: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
           | None, server: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(name))
               .issuer_name(issuer[0].subject if issuer else _name(name))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None),
                              critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = _issue(tmp, "ca", None)
    other_ca = _issue(tmp, "other-ca", None)
    _issue(tmp, "server", ca, server=True)
    _issue(tmp, "client", ca)
    _issue(tmp, "stranger", other_ca)

    def pem(name: str) -> Pem:
        return tmp / f"{name}.crt", tmp / f"{name}.key"

    return Pki(tmp / "ca.crt", pem("server"), pem("client"), pem("stranger"))


@pytest.fixture(scope="module")
def mtls(pki: Pki) -> Iterator[str]:
    """A gateway serving HTTPS and gRPC over TLS, requiring client certificates from the CA."""
    tls = TlsSettings(cert=pki.server[0], key=pki.server[1], client_ca=pki.ca)
    with Background(ROOT / "models", tls=tls) as servers:
        yield servers.gateway_http.split(":")[1] + ":" + servers.gateway_grpc.split(":")[1]


def ports(mtls: str) -> tuple[str, str]:
    http, grpc_port = mtls.split(":")
    return f"localhost:{http}", f"localhost:{grpc_port}"


def https_client(url: str, ca: Path, client: Pem | None) -> thttp.InferenceServerClient:
    def context(*_: object, **__: object) -> gevent.ssl.SSLContext:
        made = gevent.ssl.create_default_context(cafile=str(ca))
        if client is not None:
            made.load_cert_chain(str(client[0]), str(client[1]))
        return made

    return thttp.InferenceServerClient(url, ssl=True, ssl_context_factory=context)


def grpc_client(url: str, ca: Path, client: Pem | None) -> tgrpc.InferenceServerClient:
    return tgrpc.InferenceServerClient(
        url, ssl=True, root_certificates=str(ca),
        private_key=str(client[1]) if client else None,
        certificate_chain=str(client[0]) if client else None)


def rows(count: int) -> np.ndarray:
    return np.random.default_rng(count).random((count, 64), dtype=np.float32)


def infer_http(client: thttp.InferenceServerClient, count: int = 1) -> np.ndarray:
    tensor = thttp.InferInput("INPUT0", [count, 64], "FP32")
    tensor.set_data_from_numpy(rows(count), binary_data=True)
    return client.infer("digits", [tensor]).as_numpy("OUTPUT0")


def infer_grpc(client: tgrpc.InferenceServerClient, count: int = 1) -> np.ndarray:
    tensor = tgrpc.InferInput("INPUT0", [count, 64], "FP32")
    tensor.set_data_from_numpy(rows(count))
    return client.infer("digits", [tensor]).as_numpy("OUTPUT0")


def test_https_and_grpc_tls_answer_a_client_with_a_certificate(pki: Pki, mtls: str) -> None:
    http, grpc_url = ports(mtls)
    assert infer_http(https_client(http, pki.ca, pki.client)).shape == (1, 10)
    assert infer_grpc(grpc_client(grpc_url, pki.ca, pki.client)).shape == (1, 10)


def test_large_https_bodies_one_after_another_on_one_connection(pki: Pki, mtls: str) -> None:
    # NOTE: 64 rows are 16 KiB of binary tensor: the body is read into the lane arena
    http, grpc_url = ports(mtls)
    expected = infer_grpc(grpc_client(grpc_url, pki.ca, pki.client), 64)
    client = https_client(http, pki.ca, pki.client)
    for _ in range(3):
        np.testing.assert_array_equal(infer_http(client, 64), expected)


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_mtls_refuses_a_client_without_a_trusted_certificate(pki: Pki, mtls: str,
                                                             who: str) -> None:
    client = None if who == "no certificate" else pki.stranger
    http, grpc_url = ports(mtls)
    with pytest.raises(Exception):  # noqa: B017 - the TLS handshake fails, in gevent's words
        infer_http(https_client(http, pki.ca, client))
    with pytest.raises(InferenceServerException) as caught:
        infer_grpc(grpc_client(grpc_url, pki.ca, client))
    assert caught.value.status() == "StatusCode.UNAVAILABLE"


def test_a_plain_text_client_gets_no_answer_from_a_tls_port(mtls: str) -> None:
    http, _ = ports(mtls)
    with pytest.raises(Exception):  # noqa: B017 - the server closes a connection that is not TLS
        thttp.InferenceServerClient(http).is_server_live()


def test_the_gateway_reaches_a_runtime_over_mtls(pki: Pki) -> None:
    async def scenario() -> bytes:
        runtime = Runtime(RuntimeSettings(model_repository=ROOT / "models", listen="127.0.0.1:0",
                                          lane="127.0.0.1:0", threads=1, tls_cert=pki.server[0],
                                          tls_key=pki.server[1], tls_client_ca=pki.ca),
                          load_models(RuntimeSettings(model_repository=ROOT / "models")))
        await runtime.start()
        answers = []
        try:
            for client in (pki.client, pki.stranger):
                port = runtime.lane_address.rsplit(":", 1)[1]
                tls = TlsSettings(upstream_ca=pki.ca, upstream_cert=client[0],
                                  upstream_key=client[1])
                gateway = Gateway(GatewaySettings(
                    host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=-1,
                    runtime_endpoints=(f"localhost:{port}",), tls=tls,
                    auth=AuthSettings(enabled=False)), registry=CollectorRegistry())
                await gateway.start()
                try:
                    answers.append(await gateway.pipeline.ask("ServerReady", b""))
                except Exception as exc:
                    answers.append(repr(exc).encode())
                finally:
                    await gateway.stop(grace=0.5)
        finally:
            await runtime.stop(grace=0.5)
        return b"|".join(answers)

    first, second = asyncio.run(scenario()).split(b"|", 1)
    assert first == b"\x08\x01"  # ServerReadyResponse(ready=True)
    assert b"UNAVAILABLE" in second


def test_a_certificate_without_its_key_is_a_configuration_error(pki: Pki) -> None:
    from tensorgate.cli import build_parser, gateway_settings

    args = build_parser().parse_args(["gateway", "--tls-cert", str(pki.server[0])])
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        gateway_settings(args, ())
