"""The auth stage: who is calling (an API key or a JWT), and whether they may make this call.

API keys are found by their sha256 in the registry snapshot; JWTs are verified with pyjwt.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard, cast

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from common.errors import TensorgateError
from common.policy import ANONYMOUS, ROLES, KeyRecord, Principal, Snapshot
from common.settings import AuthSettings

if TYPE_CHECKING:
    from jwt.types import Options  # pyjwt >= 2.10; only a TypedDict for the checker

API_KEY_PREFIX = "tg_"
#: Verified JWTs kept; the cache is cleared when full (cheaper than LRU bookkeeping per hit).
JWT_CACHE_SIZE = 4096
#: API-key principals kept, by the key's sha256 (cleared when full).
PRINCIPAL_CACHE_SIZE = 4096
#: How often the JWKS file is stat()ed at most, in seconds.
JWKS_CHECK_S = 1.0

MISSING = "missing credential: send 'Authorization: Bearer <API key or JWT>'"
MALFORMED = "malformed credential: send 'Authorization: Bearer <API key or JWT>'"
UNKNOWN_KEY = "unknown or revoked API key"
JWT_MALFORMED = "malformed JWT"
JWT_EXPIRED = "JWT expired"
JWT_NOT_YET = "JWT not yet valid"
JWT_ISS_AUD = "JWT issuer or audience not accepted"
JWT_SIGNATURE = "JWT signature or algorithm not accepted"

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
#: (kid, algorithm, key) of a key that verifies RS256 or ES256 signatures.
KeyEntry: TypeAlias = tuple[str | None, str, PublicKey]


def _unauthenticated(message: str) -> TensorgateError:
    return TensorgateError(grpc.StatusCode.UNAUTHENTICATED, message)


def _denied(message: str) -> TensorgateError:
    return TensorgateError(grpc.StatusCode.PERMISSION_DENIED, message)


def describe(subject: str) -> str:
    """How messages name a caller ("key 'ci'", "token subject 'alice'"); never a secret."""
    kind, _, name = subject.partition(":")
    if kind == "key":
        return f"key '{name}'"
    if kind == "jwt":
        return f"token subject '{name}'"
    return f"caller '{subject}'"


def algorithm_for(key: object) -> str | None:
    """The one algorithm a public key may verify: RS256 for RSA, ES256 for P-256, else None."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    return None


def load_pem_key(path: Path) -> KeyEntry:
    """A PEM public key from the settings; anything but RSA or P-256 EC is a start-up error."""
    key = serialization.load_pem_public_key(path.read_bytes())
    alg = algorithm_for(key)
    if alg is None:
        raise ValueError(f"{path}: JWT keys must be RSA (RS256) or EC P-256 (ES256) public keys")
    return None, alg, cast(PublicKey, key)


def parse_jwks(data: bytes) -> list[KeyEntry]:
    """The RS256 / ES256 verification keys of a JWKS document; other keys are skipped.

    Symmetric (`oct`) keys are skipped on purpose: HS256 is verified only with the configured
    secret, so a key file can never turn into an HMAC secret.
    """
    document = json.loads(data)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS document is an object with a 'keys' list")
    entries: list[KeyEntry] = []
    for item in document["keys"]:
        if not isinstance(item, dict) or item.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(item)
        except jwt.PyJWTError:
            continue
        key = jwk.key
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            key = key.public_key()
        alg = algorithm_for(key)
        if alg is not None and alg == jwk.algorithm_name:
            entries.append((jwk.key_id, alg, key))
    return entries


class JwksFile:
    """A JWKS file's keys, re-read when its inode, mtime or size changes.

    `refresh(now)` stats the file at most once per JWKS_CHECK_S, so the hot path pays a float
    comparison. A file that is missing or unreadable keeps the last good keys (a writer may be
    half-way through); a valid file with no usable keys empties the set (keys were rotated out).
    """

    def __init__(self, path: Path, now: float) -> None:
        self.path = path
        self.keys: list[KeyEntry] = []
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = now
        self._reload()

    def refresh(self, now: float) -> bool:
        """Look at the file if a second has passed; True when the keys changed."""
        if now - self._checked_at < JWKS_CHECK_S:
            return False
        self._checked_at = now
        return self._reload()

    def _reload(self) -> bool:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return False
            keys = parse_jwks(self.path.read_bytes())
        except (OSError, ValueError):
            return False
        self.keys, self._stamp = keys, stamp
        return True


class Authenticator:
    """Turns an `Authorization` header into a Principal, and checks what that principal may call.

    API key: one sha256 and two dict lookups (snapshot, principal). JWT: verified once, then
    served from a bounded cache until `exp` (plus leeway) passes on the injected clock.
    A JWT caller's quota is the one the settings give every JWT subject (`jwt_rate`, ...), counted
    per subject: a token's own claims never set it, so a caller cannot raise its own limit.
    """

    def __init__(
        self,
        settings: AuthSettings,
        snapshot: Callable[[], Snapshot],
        clock: Callable[[], float] = time.time,
        refresh: Callable[[], bool] | None = None,
    ) -> None:
        self._enabled = settings.enabled
        self._snapshot = snapshot
        #: Re-reads the registry now if its generation moved (rate-limited by its owner); True
        #: when the snapshot changed. Lets a key created a moment ago work at once.
        self._refresh = refresh
        self._clock = clock
        self._settings = settings
        self._hs_secret = settings.jwt_secret or None
        self._pem_keys = [load_pem_key(path) for path in settings.jwt_public_keys]
        self._jwks = JwksFile(settings.jwks_file, clock()) if settings.jwks_file else None
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._principals: dict[str, tuple[KeyRecord, Principal]] = {}
        self._options: Options = {
            "require": ["exp"],
            # NOTE: times are checked against the injected clock in _check_times, not by pyjwt.
            "verify_exp": False, "verify_nbf": False, "verify_iat": False,
            "verify_iss": settings.jwt_issuer is not None,
            "verify_aud": settings.jwt_audience is not None,
        }

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind a raw `Authorization` value; UNAUTHENTICATED when there is none."""
        if not self._enabled:
            return ANONYMOUS
        if not authorization:
            raise _unauthenticated(MISSING)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise _unauthenticated(MALFORMED)
        if token.startswith(API_KEY_PREFIX):
            return self._api_key(token)
        if token.count(".") != 2:
            raise _unauthenticated(MALFORMED)
        return self._jwt(token)

    def authorize(self, principal: Principal, model: str | None, admin: bool = False) -> None:
        """PERMISSION_DENIED unless the principal may make this call; the admin role may all."""
        if principal.role == "admin":
            return
        if admin:
            raise _denied("this call needs the admin role")
        if model is not None and not principal.may_use(model):
            raise _denied(f"{describe(principal.subject)} may not use model '{model}'")

    def _api_key(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).hexdigest()
        record = self._snapshot().keys.get(digest)
        if record is None and self._refresh is not None and self._refresh():
            record = self._snapshot().keys.get(digest)
        if record is None or record.revoked:
            raise _unauthenticated(UNKNOWN_KEY)
        # NOTE: building a frozen Principal costs more than the rest of this path; reuse it while
        # the snapshot holds the very same record (a new generation brings new records).
        cached = self._principals.get(digest)
        if cached is not None and cached[0] is record:
            return cached[1]
        principal = record.principal()
        if len(self._principals) >= PRINCIPAL_CACHE_SIZE:
            self._principals.clear()
        self._principals[digest] = (record, principal)
        return principal

    def _jwt(self, token: str) -> Principal:
        now = self._clock()
        if self._jwks is not None and self._jwks.refresh(now):
            # Rotated keys must stop admitting tokens they signed, cached or not.
            self._cache.clear()
        hit = self._cache.get(token)
        if hit is not None:
            if now < hit[1]:
                return hit[0]
            self._cache.pop(token, None)
            raise _unauthenticated(JWT_EXPIRED)
        principal, deadline = self._verify(token, now)
        if len(self._cache) >= JWT_CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = (principal, deadline)
        return principal

    def _verify(self, token: str, now: float) -> tuple[Principal, float]:
        """Check the signature and claims; the principal and when it stops being valid."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthenticated(JWT_MALFORMED) from None
        alg = header.get("alg")
        kid = header.get("kid")
        keys = self._keys_for(alg if isinstance(alg, str) else "", kid)
        if not keys:
            raise _unauthenticated(JWT_SIGNATURE)
        claims = self._decode(token, str(alg), keys)
        deadline = self._check_times(claims, now)
        return self._principal(claims), deadline

    def _keys_for(self, alg: str, kid: object) -> Sequence[str | PublicKey]:
        """Only keys of the token's algorithm's own type: no HS256 with a public key's bytes."""
        if alg == "HS256":
            return [self._hs_secret] if self._hs_secret else []
        if alg not in ("RS256", "ES256"):
            return []  # "none" and everything else
        jwks = self._jwks.keys if self._jwks is not None else []
        if isinstance(kid, str):
            jwks = [entry for entry in jwks if entry[0] == kid]
        return [key for _, key_alg, key in (*jwks, *self._pem_keys) if key_alg == alg]

    def _decode(self, token: str, alg: str, keys: Sequence[str | PublicKey]) -> dict[str, Any]:
        s = self._settings
        for key in keys:
            try:
                return jwt.decode(
                    token, key, algorithms=[alg], options=self._options,
                    audience=s.jwt_audience, issuer=s.jwt_issuer)
            except jwt.InvalidSignatureError:
                continue  # another key of the same type may have signed it
            except jwt.PyJWTError as exc:
                raise _unauthenticated(_jwt_message(exc)) from None
        raise _unauthenticated(JWT_SIGNATURE)

    def _check_times(self, claims: dict[str, Any], now: float) -> float:
        """`exp` and `nbf` against the injected clock; the time the token stops being valid."""
        leeway = self._settings.jwt_leeway_s
        exp, nbf = claims.get("exp"), claims.get("nbf", now)
        if not _is_number(exp) or not _is_number(nbf):
            raise _unauthenticated(JWT_MALFORMED)
        if now >= exp + leeway:
            raise _unauthenticated(JWT_EXPIRED)
        if nbf > now + leeway:
            raise _unauthenticated(JWT_NOT_YET)
        return float(exp + leeway)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        s = self._settings
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _unauthenticated("JWT has no 'sub' claim")
        role = claims.get(s.role_claim, "infer")
        if role not in ROLES:
            raise _unauthenticated("JWT role not recognised")
        models = claims.get(s.models_claim, ("*",))
        if isinstance(models, str):
            models = (models,)
        elif not isinstance(models, list | tuple) or not all(isinstance(m, str) for m in models):
            raise _unauthenticated(f"JWT claim '{s.models_claim}' must be a list of globs or one "
                                   "string")
        return Principal(subject=f"jwt:{sub}", role=role, models=tuple(models),
                         rate=s.jwt_rate, burst=s.jwt_burst, concurrency=s.jwt_concurrency)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _jwt_message(exc: jwt.PyJWTError) -> str:
    """What went wrong with a JWT, without echoing any part of it."""
    if isinstance(exc, jwt.InvalidIssuerError | jwt.InvalidAudienceError):
        return JWT_ISS_AUD
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return JWT_ISS_AUD if exc.claim in ("iss", "aud") else f"JWT has no '{exc.claim}' claim"
    if isinstance(exc, jwt.InvalidAlgorithmError | jwt.InvalidKeyError | jwt.InvalidSignatureError):
        return JWT_SIGNATURE
    return JWT_MALFORMED
