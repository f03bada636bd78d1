"""The auth stage: API keys from the snapshot, JWTs (HS256, RS256, ES256, JWKS), and authorize."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from common.errors import TensorgateError
from common.policy import ANONYMOUS, KeyRecord, Principal, Snapshot
from common.settings import AuthSettings
from gateway import auth
from gateway.auth import Authenticator

NOW = 1_700_000_000.0
HS_SECRET = "an-hs256-secret-that-is-long-enough-32b"
API_SECRET = "tg_live_s3cret_value_0123456789"
REVOKED_SECRET = "tg_revoked_s3cret_value_987654"

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _record(name: str, revoked: bool = False, role: str = "infer") -> KeyRecord:
    return KeyRecord(key_id=f"id-{name}", name=name, role=role, models=("digits*",), rate=5.0,
                     burst=10, concurrency=2, created_at=0.0, revoked=revoked)


def _snapshot(**records: KeyRecord) -> Snapshot:
    keys = {hashlib.sha256(secret.encode()).hexdigest(): rec for secret, rec in records.items()}
    return Snapshot(generation=1, keys=MappingProxyType(keys))


SNAPSHOT = Snapshot(generation=1, keys=MappingProxyType({
    hashlib.sha256(API_SECRET.encode()).hexdigest(): _record("ci"),
    hashlib.sha256(REVOKED_SECRET.encode()).hexdigest(): _record("old", revoked=True),
}))


def make(clock: Clock | None = None, snapshot: Snapshot = SNAPSHOT, **settings: Any
         ) -> Authenticator:
    settings.setdefault("jwt_secret", HS_SECRET)
    settings.setdefault("jwt_leeway_s", 0.0)
    return Authenticator(AuthSettings(**settings), lambda: snapshot, clock or Clock())


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": NOW + 60, **extra}


def refused(authenticator: Authenticator, header: str | None, code: grpc.StatusCode = UNAUTH
            ) -> str:
    with pytest.raises(TensorgateError) as info:
        authenticator.authenticate(header)
    assert info.value.code == code
    return info.value.message


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
              ) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(key: Any) -> bytes:
    return bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def write_pem(tmp_path: Path, name: str, key: Any) -> Path:
    path = tmp_path / name
    path.write_bytes(pem(key))
    return path


def jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) \
        else jwt.algorithms.ECAlgorithm
    data = json.loads(algorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid}


def write_jwks(path: Path, *keys: dict[str, Any]) -> None:
    path.write_text(json.dumps({"keys": list(keys)}))


# --- API keys and the header ------------------------------------------------------------------


def test_api_key_maps_to_its_record_principal() -> None:
    principal = make().authenticate(f"Bearer {API_SECRET}")
    assert principal == Principal("key:ci", "infer", ("digits*",), 5.0, 10, 2)


def test_api_key_principal_is_reused_while_its_record_is_current() -> None:
    current = [SNAPSHOT]
    authenticator = Authenticator(AuthSettings(), lambda: current[0], Clock())
    first = authenticator.authenticate(f"Bearer {API_SECRET}")
    assert authenticator.authenticate(f"Bearer {API_SECRET}") is first
    current[0] = _snapshot(**{API_SECRET: replace(_record("ci"), models=("resnet",))})
    assert authenticator.authenticate(f"Bearer {API_SECRET}").models == ("resnet",)


def test_bearer_scheme_is_case_insensitive() -> None:
    assert make().authenticate(f"bearer {API_SECRET}").subject == "key:ci"


@pytest.mark.parametrize("secret", ["tg_not_a_key_at_all", REVOKED_SECRET])
def test_unknown_and_revoked_keys_get_one_message_without_the_secret(secret: str) -> None:
    message = refused(make(), f"Bearer {secret}")
    assert message == "unknown or revoked API key"
    assert secret not in message


def test_key_revoked_in_a_new_snapshot_is_refused_at_once() -> None:
    current = [SNAPSHOT]
    authenticator = Authenticator(AuthSettings(), lambda: current[0], Clock())
    assert authenticator.authenticate(f"Bearer {API_SECRET}").subject == "key:ci"
    current[0] = _snapshot(**{API_SECRET: _record("ci", revoked=True)})
    assert refused(authenticator, f"Bearer {API_SECRET}") == "unknown or revoked API key"


@pytest.mark.parametrize("header", [None, ""])
def test_missing_credential_says_what_to_send(header: str | None) -> None:
    assert refused(make(), header) == (
        "missing credential: send 'Authorization: Bearer <API key or JWT>'")


@pytest.mark.parametrize("header", [
    f"Basic {API_SECRET}", "Bearer", "Bearer ", API_SECRET, f"Bearer {API_SECRET} extra",
    "Bearer not-a-key-nor-a-jwt"])
def test_malformed_header_is_refused_without_echo(header: str) -> None:
    message = refused(make(), header)
    assert message.startswith("malformed credential")
    assert API_SECRET not in message


def test_disabled_auth_admits_anonymous_admin() -> None:
    authenticator = make(enabled=False)
    assert authenticator.authenticate(None) is ANONYMOUS
    assert authenticator.authenticate("Basic garbage") is ANONYMOUS
    assert ANONYMOUS.role == "admin"


# --- JWT: algorithms and keys -----------------------------------------------------------------


def test_hs256_token_maps_claims_to_a_principal() -> None:
    token = jwt.encode(claims(role="admin", models=["digits", "resnet*"]), HS_SECRET, "HS256")
    principal = make().authenticate(f"Bearer {token}")
    assert principal == Principal("jwt:alice", "admin", ("digits", "resnet*"))
    assert (principal.rate, principal.burst, principal.concurrency) == (0.0, 0, 0)


def test_jwt_defaults_infer_role_and_every_model() -> None:
    principal = make().authenticate(f"Bearer {jwt.encode(claims(), HS_SECRET, 'HS256')}")
    assert (principal.role, principal.models) == ("infer", ("*",))


def test_models_claim_may_be_one_string_and_claim_names_are_configurable() -> None:
    token = jwt.encode(claims(scope_models="digits", grp="admin"), HS_SECRET, "HS256")
    principal = make(models_claim="scope_models", role_claim="grp").authenticate(
        f"Bearer {token}")
    assert (principal.role, principal.models) == ("admin", ("digits",))


def test_rs256_with_pem_key(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    authenticator = make(jwt_secret=None, jwt_public_keys=(write_pem(tmp_path, "r.pem", rsa_key),))
    token = jwt.encode(claims(), rsa_key, "RS256")
    assert authenticator.authenticate(f"Bearer {token}").subject == "jwt:alice"


def test_es256_with_pem_key(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    authenticator = make(jwt_secret=None, jwt_public_keys=(write_pem(tmp_path, "e.pem", ec_key),))
    token = jwt.encode(claims(), ec_key, "ES256")
    assert authenticator.authenticate(f"Bearer {token}").subject == "jwt:alice"


def test_each_algorithm_only_with_its_own_key_type(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    only_rsa = make(jwt_secret=None, jwt_public_keys=(write_pem(tmp_path, "r.pem", rsa_key),))
    only_ec = make(jwt_secret=None, jwt_public_keys=(write_pem(tmp_path, "e.pem", ec_key),))
    es_token = jwt.encode(claims(), ec_key, "ES256")
    rs_token = jwt.encode(claims(), rsa_key, "RS256")
    hs_token = jwt.encode(claims(), HS_SECRET, "HS256")
    signature = "JWT signature or algorithm not accepted"
    assert refused(only_rsa, f"Bearer {es_token}") == signature
    assert refused(only_ec, f"Bearer {rs_token}") == signature
    assert refused(only_rsa, f"Bearer {hs_token}") == signature


def test_bad_signature_is_refused() -> None:
    token = jwt.encode(claims(), "another-secret-of-plenty-of-length-xx", "HS256")
    head, _, signature = token.split(".")
    forged = jwt.encode(claims(sub="mallory"), HS_SECRET, "HS256").split(".")[1]
    for bad in (token, f"{head}.{forged}.{signature}"):
        message = refused(make(), f"Bearer {bad}")
        assert message == "JWT signature or algorithm not accepted"
        assert HS_SECRET not in message and bad not in message


@pytest.mark.parametrize("header", [{"alg": "none"}, {"alg": "None"}, {"typ": "JWT"},
                                    {"alg": "HS512"}, {"alg": ["HS256"]}])
@pytest.mark.parametrize("signature", [b"", b"anything"])
def test_alg_none_and_unlisted_algorithms_are_refused(
        header: dict[str, Any], signature: bytes) -> None:
    token = hand_made(header, claims(role="admin"), lambda _: signature)
    assert refused(make(), f"Bearer {token}") == "JWT signature or algorithm not accepted"


def test_pyjwt_none_token_is_refused() -> None:
    token = jwt.encode(claims(role="admin"), None, algorithm="none")
    assert token.endswith(".")
    assert refused(make(), f"Bearer {token}") == "JWT signature or algorithm not accepted"


def test_hs256_signed_with_the_rsa_public_pem_is_refused(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """Algorithm confusion: the public key's bytes must never serve as an HMAC secret."""
    pem_path = write_pem(tmp_path, "r.pem", rsa_key)
    token = hand_made({"alg": "HS256", "typ": "JWT"}, claims(role="admin"),
                      lambda data: hmac.new(pem(rsa_key), data, hashlib.sha256).digest())
    for authenticator in (make(jwt_secret=None, jwt_public_keys=(pem_path,)),
                          make(jwt_public_keys=(pem_path,))):
        assert refused(authenticator, f"Bearer {token}") == (
            "JWT signature or algorithm not accepted")


def test_hs256_refused_when_no_secret_is_configured() -> None:
    token = jwt.encode(claims(), HS_SECRET, "HS256")
    assert refused(make(jwt_secret=None), f"Bearer {token}") == (
        "JWT signature or algorithm not accepted")


def test_unsupported_pem_keys_fail_at_start(tmp_path: Path) -> None:
    for name, key in (("ed.pem", ed25519.Ed25519PrivateKey.generate()),
                      ("p384.pem", ec.generate_private_key(ec.SECP384R1()))):
        with pytest.raises(ValueError, match=r"RSA .* or EC P-256"):
            make(jwt_public_keys=(write_pem(tmp_path, name, key),))


@pytest.mark.parametrize("token", ["a.b.c", "!!!.###.$$$", "bm90IGpzb24.e30.c2ln"])
def test_malformed_jwt(token: str) -> None:
    assert refused(make(), f"Bearer {token}") == "malformed JWT"


def test_payload_that_is_not_json_is_malformed() -> None:
    signing_input = f"{_b64(json.dumps({'alg': 'HS256'}).encode())}.{_b64(b'not json')}"
    sig = _b64(hmac.new(HS_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())
    assert refused(make(), f"Bearer {signing_input}.{sig}") == "malformed JWT"


# --- JWT: claims and times --------------------------------------------------------------------


def test_exp_is_required() -> None:
    token = jwt.encode({"sub": "alice"}, HS_SECRET, "HS256")
    assert refused(make(), f"Bearer {token}") == "JWT has no 'exp' claim"


def test_exp_that_is_not_a_number_is_malformed() -> None:
    token = jwt.encode({"sub": "alice", "exp": "tomorrow"}, HS_SECRET, "HS256")
    assert refused(make(), f"Bearer {token}") == "malformed JWT"


def test_missing_or_empty_sub_is_refused() -> None:
    for payload in ({"exp": NOW + 60}, {"sub": "", "exp": NOW + 60}):
        token = jwt.encode(payload, HS_SECRET, "HS256")
        assert refused(make(), f"Bearer {token}") == "JWT has no 'sub' claim"


def test_unknown_role_is_unauthenticated() -> None:
    token = jwt.encode(claims(role="root"), HS_SECRET, "HS256")
    assert refused(make(), f"Bearer {token}") == "JWT role not recognised"


def test_models_claim_of_the_wrong_type_is_refused() -> None:
    for models in (3, ["digits", 4], {"digits": True}):
        token = jwt.encode(claims(models=models), HS_SECRET, "HS256")
        assert "'models' must be a list of globs" in refused(make(), f"Bearer {token}")


def test_exp_edge_with_leeway() -> None:
    clock = Clock(NOW + 29.9)
    authenticator = make(clock, jwt_leeway_s=30.0)
    token = f"Bearer {jwt.encode(claims(exp=NOW), HS_SECRET, 'HS256')}"
    assert authenticator.authenticate(token).subject == "jwt:alice"
    clock.now = NOW + 30.0  # exactly exp + leeway: expired (pyjwt's rule, exp <= now - leeway)
    assert refused(make(clock, jwt_leeway_s=30.0), token) == "JWT expired"


def test_expired_without_leeway() -> None:
    token = f"Bearer {jwt.encode(claims(exp=NOW - 1), HS_SECRET, 'HS256')}"
    assert refused(make(), token) == "JWT expired"


def test_nbf_edge_with_leeway() -> None:
    token = f"Bearer {jwt.encode(claims(nbf=NOW + 100, exp=NOW + 500), HS_SECRET, 'HS256')}"
    assert refused(make(Clock(NOW + 69.9), jwt_leeway_s=30.0), token) == "JWT not yet valid"
    principal = make(Clock(NOW + 70.0), jwt_leeway_s=30.0).authenticate(token)
    assert principal.subject == "jwt:alice"
    assert refused(make(Clock(NOW + 99.9)), token) == "JWT not yet valid"


ISS_AUD = {"jwt_issuer": "https://idp.example", "jwt_audience": "tensorgate"}


@pytest.mark.parametrize("payload", [
    claims(iss="https://evil.example", aud="tensorgate"),
    claims(iss="https://idp.example", aud="other"),
    claims(aud="tensorgate"),
    claims(iss="https://idp.example"),
])
def test_issuer_and_audience_checked_when_configured(payload: dict[str, Any]) -> None:
    token = jwt.encode(payload, HS_SECRET, "HS256")
    assert refused(make(**ISS_AUD), f"Bearer {token}") == "JWT issuer or audience not accepted"


def test_issuer_and_audience_accepted() -> None:
    token = jwt.encode(claims(iss="https://idp.example", aud=["x", "tensorgate"]), HS_SECRET,
                       "HS256")
    assert make(**ISS_AUD).authenticate(f"Bearer {token}").subject == "jwt:alice"


def test_audience_not_checked_when_not_configured() -> None:
    token = jwt.encode(claims(iss="anyone", aud="someone-else"), HS_SECRET, "HS256")
    assert make().authenticate(f"Bearer {token}").subject == "jwt:alice"


# --- JWT: cache -------------------------------------------------------------------------------


def test_cache_serves_repeats_and_honours_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_decode = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting)
    clock = Clock()
    authenticator = make(clock)
    token = f"Bearer {jwt.encode(claims(exp=NOW + 10), HS_SECRET, 'HS256')}"
    first = authenticator.authenticate(token)
    clock.now = NOW + 9.9
    assert authenticator.authenticate(token) is first
    assert len(calls) == 1
    clock.now = NOW + 10.0
    assert refused(authenticator, token) == "JWT expired"
    assert refused(authenticator, token) == "JWT expired"  # and not cached as valid again


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "JWT_CACHE_SIZE", 3)
    authenticator = make()
    for i in range(7):
        token = jwt.encode(claims(sub=f"user{i}"), HS_SECRET, "HS256")
        assert authenticator.authenticate(f"Bearer {token}").subject == f"jwt:user{i}"
        assert len(authenticator._cache) <= 3


# --- JWKS -------------------------------------------------------------------------------------


def test_jwks_selects_the_key_by_kid(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey,
        ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, jwk(rsa_key, "a"), jwk(rsa_key2, "b"), jwk(ec_key, "e"))
    authenticator = make(jwt_secret=None, jwks_file=jwks)
    ok_b = jwt.encode(claims(sub="b"), rsa_key2, "RS256", headers={"kid": "b"})
    ok_e = jwt.encode(claims(sub="e"), ec_key, "ES256", headers={"kid": "e"})
    no_kid = jwt.encode(claims(sub="n"), rsa_key, "RS256")
    assert authenticator.authenticate(f"Bearer {ok_b}").subject == "jwt:b"
    assert authenticator.authenticate(f"Bearer {ok_e}").subject == "jwt:e"
    assert authenticator.authenticate(f"Bearer {no_kid}").subject == "jwt:n"
    # Signed by b's key but naming a: only a's key is tried.
    wrong_kid = jwt.encode(claims(), rsa_key2, "RS256", headers={"kid": "a"})
    assert refused(authenticator, f"Bearer {wrong_kid}") == (
        "JWT signature or algorithm not accepted")


def test_jwks_oct_keys_never_verify_hs256(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, {"kty": "oct", "kid": "s", "k": _b64(HS_SECRET.encode())})
    token = jwt.encode(claims(), HS_SECRET, "HS256", headers={"kid": "s"})
    assert refused(make(jwt_secret=None, jwks_file=jwks), f"Bearer {token}") == (
        "JWT signature or algorithm not accepted")


def test_jwks_reread_after_change_at_most_once_a_second(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> None:
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, jwk(rsa_key, "a"))
    clock = Clock()
    authenticator = make(clock, jwt_secret=None, jwks_file=jwks)
    old = f"Bearer {jwt.encode(claims(sub='old'), rsa_key, 'RS256', headers={'kid': 'a'})}"
    new = f"Bearer {jwt.encode(claims(sub='new'), rsa_key2, 'RS256', headers={'kid': 'b'})}"
    assert authenticator.authenticate(old).subject == "jwt:old"
    assert refused(authenticator, new) == "JWT signature or algorithm not accepted"

    write_jwks(jwks, jwk(rsa_key2, "b"))  # a rotated out, b in
    clock.now = NOW + 0.5
    assert authenticator.authenticate(old).subject == "jwt:old"  # not looked at yet
    clock.now = NOW + 1.01
    assert authenticator.authenticate(new).subject == "jwt:new"
    # The cached token signed by the retired key stops working too.
    assert refused(authenticator, old) == "JWT signature or algorithm not accepted"


def test_jwks_half_written_file_keeps_the_last_good_keys(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, jwk(rsa_key, "a"))
    clock = Clock()
    authenticator = make(clock, jwt_secret=None, jwks_file=jwks)
    jwks.write_text('{"keys": [')
    clock.now = NOW + 2
    token = f"Bearer {jwt.encode(claims(), rsa_key, 'RS256', headers={'kid': 'a'})}"
    assert authenticator.authenticate(token).subject == "jwt:alice"


def test_missing_jwks_file_admits_nothing_until_it_appears(
        tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwks = tmp_path / "later.json"
    clock = Clock()
    authenticator = make(clock, jwt_secret=None, jwks_file=jwks)
    token = f"Bearer {jwt.encode(claims(), ec_key, 'ES256')}"
    assert refused(authenticator, token) == "JWT signature or algorithm not accepted"
    write_jwks(jwks, jwk(ec_key, "e"))
    clock.now = NOW + 1
    assert authenticator.authenticate(token).subject == "jwt:alice"


# --- authorize --------------------------------------------------------------------------------


def test_admin_calls_need_the_admin_role() -> None:
    authenticator = make()
    with pytest.raises(TensorgateError) as info:
        authenticator.authorize(Principal("key:ci", "infer"), None, admin=True)
    assert info.value.code == DENIED
    assert info.value.message == "this call needs the admin role"
    authenticator.authorize(Principal("key:ops", "admin"), None, admin=True)


def test_model_globs_decide_which_models() -> None:
    authenticator = make()
    principal = Principal("key:ci", "infer", ("digits*", "resnet"))
    authenticator.authorize(principal, "digits")
    authenticator.authorize(principal, "digits_v2")
    authenticator.authorize(principal, "resnet")
    authenticator.authorize(principal, None)
    with pytest.raises(TensorgateError) as info:
        authenticator.authorize(principal, "resnet50")
    assert info.value.code == DENIED
    assert info.value.message == "key 'ci' may not use model 'resnet50'"


def test_jwt_subject_named_in_denial() -> None:
    with pytest.raises(TensorgateError) as info:
        make().authorize(Principal("jwt:alice", "infer", ()), "digits")
    assert info.value.message == "token subject 'alice' may not use model 'digits'"


def test_admin_role_may_use_every_model() -> None:
    admin = Principal("key:ops", "admin", ())
    assert not admin.may_use("anything")
    assert make().authorize(admin, "anything", admin=True) is None
    assert make().authorize(ANONYMOUS, "digits") is None


def test_api_key_principal_passes_authorize_end_to_end() -> None:
    authenticator = make()
    principal = authenticator.authenticate(f"Bearer {API_SECRET}")
    authenticator.authorize(principal, "digits")
    with pytest.raises(TensorgateError) as info:
        authenticator.authorize(principal, "resnet")
    assert API_SECRET not in info.value.message
    assert "key 'ci'" in info.value.message


def test_each_jwt_subject_gets_the_configured_quota_whatever_its_claims() -> None:
    authenticator = make(jwt_rate=5.0, jwt_burst=10, jwt_concurrency=2)
    token = jwt.encode(claims(rate=1e9, concurrency=0), HS_SECRET, "HS256")
    principal = authenticator.authenticate(f"Bearer {token}")
    assert (principal.subject, principal.rate, principal.burst, principal.concurrency) == (
        "jwt:alice", 5.0, 10, 2)
