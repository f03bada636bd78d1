"""What the registry tells the gateway: API keys, traffic policies, and the caller they admit.

Plain frozen values: the registry builds them, the gateway's pipeline stages only read them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ROLES = ("infer", "admin")
#: How a split picks its subject: the caller's key, its JWT subject, or a request header.
STICKY_KINDS = ("key", "sub", "header:")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: who, with which role, on which models, under which quota."""

    subject: str  # "key:<name>" or "jwt:<sub>": stable, used for quotas and sticky splits
    role: str = "infer"
    models: tuple[str, ...] = ("*",)  # fnmatch globs
    rate: float = 0.0  # requests per second; 0: no limit
    burst: int = 0  # bucket size; 0: max(1, rate)
    concurrency: int = 0  # requests in flight at once; 0: no limit

    def may_use(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, glob) for glob in self.models)


#: The caller when auth is off: may do everything, no quota.
ANONYMOUS = Principal(subject="anonymous", role="admin")


@dataclass(frozen=True)
class KeyRecord:
    """An API key as the registry stores it: the secret itself is never kept, only its hash."""

    key_id: str
    name: str
    role: str
    models: tuple[str, ...]
    rate: float
    burst: int
    concurrency: int
    created_at: float
    revoked: bool = False

    def principal(self) -> Principal:
        return Principal(f"key:{self.name}", self.role, self.models, self.rate, self.burst,
                         self.concurrency)


@dataclass(frozen=True)
class TrafficPolicy:
    """How a model's requests without an explicit version are shared between its versions."""

    model: str
    weights: tuple[tuple[str, int], ...]  # (version, weight), weights > 0
    sticky: str = "key"  # "key", "sub" or "header:<name>"
    shadow_version: str | None = None
    shadow_percent: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """The registry as the gateway's hot path sees it; replaced whole, never mutated."""

    generation: int = 0
    keys: Mapping[str, KeyRecord] = field(default_factory=lambda: MappingProxyType({}))
    traffic: Mapping[str, TrafficPolicy] = field(default_factory=lambda: MappingProxyType({}))
    #: model -> its `production` version: what a request without a version gets when the model
    #: has no traffic policy.
    production: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: model -> its registered versions in state `ready`: runtime workers reload a model whose
    #: set changed.
    ready: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    #: operator settings by name ('trace', 'logging'), as JSON text: every gateway adopts them.
    settings: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


EMPTY = Snapshot()
