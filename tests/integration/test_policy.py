"""Auth, quotas and traffic policies through a real gateway, called with tritonclient."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tritonclient.utils import InferenceServerException

from common.registry import Registry
from common.settings import AuthSettings
from tests.integration.conftest import ROOT, Background, Servers
from tests.waiting import until

SECRET = "an HS256 secret long enough for pyjwt's liking"


@dataclass
class Policy:
    servers: Servers
    registry: Registry
    keys: dict[str, str]
    rsa_public_pem: bytes


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Policy]:
    tmp = tmp_path_factory.mktemp("policy")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp / "rsa.pem").write_bytes(public_pem)
    registry = Registry(tmp / "registry.db")
    keys = {
        "admin": registry.create_key("admin", "admin")[1],
        "user": registry.create_key("user", "infer", ["digits"])[1],
        "other": registry.create_key("other", "infer", ["resnet*"])[1],
        "limited": registry.create_key("limited", "infer", ["digits"], rate=0.2, burst=2)[1],
        "bystander": registry.create_key("bystander", "infer", ["digits"], rate=0.2,
                                         burst=50)[1],
        "revoked": registry.create_key("revoked", "infer")[1],
    }
    registry.revoke_key("revoked")
    auth = AuthSettings(jwt_secret=SECRET, jwt_public_keys=(tmp / "rsa.pem",))
    with Background(ROOT / "models", auth=auth, registry_path=tmp / "registry.db",
                    registry_refresh_s=0.05) as servers:
        yield Policy(servers, registry, keys, public_pem)
    registry.close()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def http_infer(policy: Policy, headers: dict[str, str] | None, model: str = "digits",
               version: str = "") -> thttp.InferResult:
    tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32), binary_data=True)
    client = thttp.InferenceServerClient(policy.servers.gateway_http)
    # NOTE: a copy: tritonclient adds its own headers to the dict it is given.
    return client.infer(model, [tensor], model_version=version,
                        headers=dict(headers) if headers else None)


def grpc_infer(policy: Policy, headers: dict[str, str] | None,
               version: str = "") -> tgrpc.InferResult:
    tensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
    client = tgrpc.InferenceServerClient(policy.servers.gateway_grpc)
    return client.infer("digits", [tensor], model_version=version, headers=headers)


def failure(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def token(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode({"exp": time.time() + 60, **claims}, key, algorithm=algorithm)


@pytest.mark.parametrize(("headers", "message"), [
    (None, "missing credential"),
    ({"authorization": "Basic dXNlcjpwYXNz"}, "malformed credential"),
    (bearer("tg_not-a-key-we-issued"), "unknown or revoked API key"),
])
def test_a_missing_malformed_or_unknown_credential_is_401_and_unauthenticated(
        policy: Policy, headers: dict[str, str] | None, message: str) -> None:
    http = failure(lambda: http_infer(policy, headers))
    assert http.status() == "401"
    assert message in (http.message() or "")
    rpc = failure(lambda: grpc_infer(policy, headers))
    assert rpc.status() == "StatusCode.UNAUTHENTICATED"
    assert message in (rpc.message() or "")


def test_a_revoked_key_is_refused_like_an_unknown_one(policy: Policy) -> None:
    refused = failure(lambda: http_infer(policy, bearer(policy.keys["revoked"])))
    assert refused.status() == "401"
    assert "unknown or revoked API key" in (refused.message() or "")


def test_a_key_infers_over_http_and_grpc(policy: Policy) -> None:
    headers = bearer(policy.keys["user"])
    assert http_infer(policy, headers).as_numpy("OUTPUT0").shape == (1, 10)
    assert grpc_infer(policy, headers).as_numpy("OUTPUT0").shape == (1, 10)


def test_a_key_without_the_model_or_the_admin_role_is_403(policy: Policy) -> None:
    denied = failure(lambda: http_infer(policy, bearer(policy.keys["other"])))
    assert denied.status() == "403"
    assert "may not use model 'digits'" in (denied.message() or "")
    rpc = failure(lambda: grpc_infer(policy, bearer(policy.keys["other"])))
    assert rpc.status() == "StatusCode.PERMISSION_DENIED"
    assert "may not use model 'digits'" in (rpc.message() or "")
    client = tgrpc.InferenceServerClient(policy.servers.gateway_grpc)
    index = failure(lambda: client.get_model_repository_index(
        headers=bearer(policy.keys["user"])))
    assert index.status() == "StatusCode.PERMISSION_DENIED"
    assert "admin role" in (index.message() or "")
    unload = failure(lambda: client.unload_model("digits", headers=bearer(policy.keys["user"])))
    assert unload.status() == "StatusCode.PERMISSION_DENIED"
    assert client.is_model_ready("digits")
    names = {m.name for m in client.get_model_repository_index(
        headers=bearer(policy.keys["admin"])).models}
    assert "digits" in names


def test_health_stays_open_while_metadata_needs_a_key(policy: Policy) -> None:
    client = thttp.InferenceServerClient(policy.servers.gateway_http)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    assert failure(lambda: client.get_model_metadata("digits")).status() == "401"
    assert failure(lambda: client.get_server_metadata()).status() == "401"
    metadata = client.get_model_metadata("digits", headers=bearer(policy.keys["user"]))
    assert metadata["name"] == "digits"


def test_jwts_signed_hs256_and_rs256_are_accepted_with_their_claims(policy: Policy) -> None:
    hs = token({"sub": "alice", "models": ["digits"]})
    assert http_infer(policy, bearer(hs)).as_numpy("OUTPUT0").shape == (1, 10)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = token({"sub": "mallory"}, private, "RS256")
    assert failure(lambda: http_infer(policy, bearer(stranger))).status() == "401"
    limited = token({"sub": "bob", "models": ["resnet*"]})
    assert failure(lambda: grpc_infer(policy, bearer(limited))).status() == (
        "StatusCode.PERMISSION_DENIED")


@pytest.mark.parametrize("forge", ["expired", "alg-none", "rs256-key-as-hs256-secret"])
def test_forged_or_expired_jwts_are_refused(policy: Policy, forge: str) -> None:
    if forge == "expired":
        credential = token({"sub": "alice", "exp": time.time() - 3600})
    elif forge == "alg-none":
        credential = jwt.encode({"sub": "alice", "exp": time.time() + 60}, None,
                                algorithm="none")
    else:
        def part(data: dict) -> bytes:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")

        signed = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(
            {"sub": "alice", "exp": time.time() + 60})
        mac = hmac.new(policy.rsa_public_pem, signed, hashlib.sha256).digest()
        credential = (signed + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()
    refused = failure(lambda: http_infer(policy, bearer(credential)))
    assert refused.status() == "401"
    assert "JWT" in (refused.message() or "")


def test_over_quota_is_429_with_retry_after_and_other_keys_go_on(policy: Policy) -> None:
    headers = bearer(policy.keys["limited"])
    http_infer(policy, headers)
    http_infer(policy, headers)
    client = thttp.InferenceServerClient(policy.servers.gateway_http)
    tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
    body, length = client.generate_request_body([tensor])
    request = urllib.request.Request(
        f"http://{policy.servers.gateway_http}/v2/models/digits/infer", data=body,
        headers={**headers, "Inference-Header-Content-Length": str(length or len(body))})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 429
    assert int(caught.value.headers["Retry-After"]) >= 1
    assert "rate" in caught.value.read().decode()
    rpc = failure(lambda: grpc_infer(policy, headers))
    assert rpc.status() == "StatusCode.RESOURCE_EXHAUSTED"
    for _ in range(5):
        http_infer(policy, bearer(policy.keys["bystander"]))
    rejected = policy.servers.metrics.get_sample_value(
        "tensorgate_quota_rejections_total", {"model": "digits", "limit": "rate"})
    assert rejected is not None and rejected >= 2


def wait_for_policy(policy: Policy, check: Callable[[], bool]) -> None:
    until(check, "the traffic policy picked up by the gateway", every_s=0.05)


def test_a_split_is_sticky_per_subject_and_an_explicit_version_wins(policy: Policy) -> None:
    policy.registry.set_traffic("digits", {"1": 50, "2": 50}, sticky="header:x-user")
    try:
        admin = bearer(policy.keys["admin"])

        def served(user: str, version: str = "") -> str:
            result = http_infer(policy, {**admin, "x-user": user}, version=version)
            return result.get_response()["model_version"]

        wait_for_policy(policy, lambda: len({served(f"probe-{i}") for i in range(20)}) == 2)
        first = {f"user-{i}": served(f"user-{i}") for i in range(40)}
        assert set(first.values()) == {"1", "2"}
        assert {user: served(user) for user in first} == first
        assert served("user-0", version="2") == "2" and served("user-1", version="1") == "1"
    finally:
        policy.registry.clear_traffic("digits")


def test_the_http_header_and_grpc_answer_name_the_version_that_served(policy: Policy) -> None:
    policy.registry.set_traffic("digits", {"2": 1})
    try:
        headers = bearer(policy.keys["admin"])
        # NOTE: ten in a row: under a stale 50/50 policy one answer of "2" proves nothing.
        wait_for_policy(policy, lambda: all(
            grpc_infer(policy, headers).get_response().model_version == "2"
            for _ in range(10)))
        client = thttp.InferenceServerClient(policy.servers.gateway_http)
        tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 64), np.float32), binary_data=False)
        body, _ = client.generate_request_body([tensor])
        request = urllib.request.Request(
            f"http://{policy.servers.gateway_http}/v2/models/digits/infer", data=body,
            headers=headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.headers["x-tensorgate-model-version"] == "2"
    finally:
        policy.registry.clear_traffic("digits")


def test_a_failing_shadow_never_touches_the_primary_and_is_counted(policy: Policy) -> None:
    # Version 9 does not exist: every shadow copy fails, every primary must still succeed.
    policy.registry.set_traffic("digits", {"1": 1}, shadow=("9", 100.0))
    metrics = policy.servers.metrics
    labels = {"model": "digits", "version": "9", "code": "NOT_FOUND"}
    try:
        headers = bearer(policy.keys["admin"])
        wait_for_policy(policy, lambda: (grpc_infer(policy, headers) is not None and
                                         (metrics.get_sample_value(
                                             "tensorgate_shadow_requests_total", labels) or 0)
                                         > 0))
        before = metrics.get_sample_value("tensorgate_shadow_requests_total", labels) or 0
        versions = Counter(http_infer(policy, headers).get_response()["model_version"]
                           for _ in range(10))
        assert versions == Counter({"1": 10})
        wait_for_policy(policy, lambda: (metrics.get_sample_value(
            "tensorgate_shadow_requests_total", labels) or 0) >= before + 10)
    finally:
        policy.registry.clear_traffic("digits")


def test_a_shadow_of_a_real_version_records_agreement(policy: Policy) -> None:
    policy.registry.set_traffic("digits", {"1": 1}, shadow=("2", 100.0))
    metrics = policy.servers.metrics
    try:
        headers = bearer(policy.keys["admin"])

        def compared() -> float:
            return sum(metrics.get_sample_value("tensorgate_shadow_agreement_total",
                                                {"model": "digits", "version": "2",
                                                 "agree": verdict}) or 0
                       for verdict in ("true", "false"))

        wait_for_policy(policy, lambda: grpc_infer(policy, headers) is not None and
                        compared() > 0)
        assert grpc_infer(policy, headers).get_response().model_version == "1"
    finally:
        policy.registry.clear_traffic("digits")
