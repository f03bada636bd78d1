"""The admin API's core: versions, aliases, traffic, keys and the audit log, as JSON documents.

Transport-neutral: a transport hands in a `Call` and encodes the answer. Each change is one
registry transaction that records it in the audit log with the caller as actor.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from pydantic import BaseModel

from common.errors import TensorgateError, invalid_argument, not_found, unavailable
from common.names import check_name, check_version, is_whole, shown
from common.policy import KeyRecord, TrafficPolicy
from common.registry import AuditEntry, Registry, RegistryError
from common.registry.retire import VersionHeld, retire_version
from common.registry.versions import PRODUCTION, Lifecycle, VersionRecord
from gateway.bodies import KeyBody, PromoteBody, RollbackBody, TrafficBody, validated

T = TypeVar("T")
B = TypeVar("B", bound=BaseModel)
MAX_AUDIT_LIMIT = 1000
#: How many audit entries `describe` shows.
HISTORY = 20


@dataclass(frozen=True)
class Call:
    """One admin request: who asks, the path's parameters, the query and the body (a JSON
    document, or the pydantic model below that validated it)."""

    actor: str
    params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    body: Any = None


def _body(call: Call, model: type[B], what: str) -> B:
    """The call's body as `model`: validated already by the transport, or a document (None:
    empty) validated here."""
    return validated(model, {} if call.body is None else call.body, what)


def failed_precondition(message: str) -> TensorgateError:
    return TensorgateError(grpc.StatusCode.FAILED_PRECONDITION, message)


class AdminApi:
    """The admin operations over one registry file and, for retiring, the local repository.

    The registry is a blocking SQLite connection: each call opens its own in a worker thread,
    never creating the file: a registry deleted under a running gateway stays missing, and loud.
    """

    def __init__(self, registry_path: Path | None, repository: Path | None = None, *,
                 guard: Callable[[], str | None] | None = None,
                 after_write: Callable[[], Awaitable[None]] | None = None) -> None:
        self.registry_path = registry_path
        self.repository = repository
        #: Why the registry's file cannot be trusted now (deleted, replaced), or None.
        self.guard = guard
        #: Awaited after each change, before answering: the gateway re-reads its snapshot, so a
        #: key just created works as soon as the answer arrives.
        self.after_write = after_write

    async def _run(self, work: Callable[[Registry], T], write: bool = False) -> T:
        path = self.registry_path
        if path is None:
            raise failed_precondition("this gateway has no registry (start it with --registry "
                                      "or a model repository): the admin API needs one")
        guard = self.guard

        def run() -> T:
            problem = None if guard is None else guard()
            if problem is not None:
                raise unavailable(f"{problem}; admin calls are refused until it is back")
            try:
                registry = Registry(path, create=False)
            except RegistryError as exc:
                raise unavailable(str(exc)) from None
            with registry:
                return work(registry)

        try:
            result = await asyncio.to_thread(run)
        except VersionHeld as exc:
            raise failed_precondition(str(exc)) from None
        except RegistryError as exc:  # validation refused the request; the message says why
            raise invalid_argument(str(exc)) from None
        except sqlite3.Error as exc:
            raise unavailable(f"registry {path}: {exc}") from None
        if write and self.after_write is not None:
            await self.after_write()
        return result

    # -- versions and aliases ------------------------------------------------------------------

    async def models(self, call: Call) -> dict[str, Any]:
        """Every registered model: its versions with their state, and its aliases."""
        def work(registry: Registry) -> dict[str, Any]:
            lifecycle = Lifecycle(registry)
            grouped: dict[str, list[VersionRecord]] = {}
            for record in lifecycle.versions():
                grouped.setdefault(record.model, []).append(record)
            return {"models": [{"name": name, "aliases": lifecycle.aliases(name),
                                "versions": [version_json(r) for r in records]}
                               for name, records in grouped.items()]}

        return await self._run(work)

    async def describe(self, call: Call) -> dict[str, Any]:
        """One model: versions with signatures and traffic share, aliases, policy, history."""
        model = check_name(call.params["model"])

        def work(registry: Registry) -> dict[str, Any]:
            lifecycle = Lifecycle(registry)
            records = _require_model(lifecycle, model)
            aliases = lifecycle.aliases(model)
            policy = registry.get_traffic(model)
            share = _shares(policy, aliases.get(PRODUCTION))
            return {"name": model, "aliases": aliases,
                    "versions": [{**version_json(r), "signature": r.signature,
                                  "traffic_percent": share.get(r.version, 0.0)}
                                 for r in records],
                    "traffic": None if policy is None else policy_json(policy),
                    "history": [entry_json(e)
                                for e in registry.audit_log(model=model, limit=HISTORY)]}

        return await self._run(work)

    async def promote(self, call: Call) -> dict[str, Any]:
        """Point an alias (`to`, production by default) at a ready version."""
        model, version = _model_version(call)
        alias = _body(call, PromoteBody, "promote").to

        def work(registry: Registry) -> dict[str, Any]:
            lifecycle = Lifecycle(registry)
            record = _require_version(lifecycle, model, version)
            if record.state != "ready":
                raise failed_precondition(f"version {record.label} is {record.state}, not ready:"
                                          " only a validated version can be promoted")
            previous = lifecycle.promote(model, version, call.actor, alias)
            return {"model": model, "alias": alias, "version": version, "previous": previous}

        return await self._run(work, write=True)

    async def rollback(self, call: Call) -> dict[str, Any]:
        """Point an alias back at the ready version it held before the current one."""
        model = check_name(call.params["model"])
        alias = _body(call, RollbackBody, "rollback").alias

        def work(registry: Registry) -> dict[str, Any]:
            lifecycle = Lifecycle(registry)
            _require_model(lifecycle, model)
            try:
                current, target = lifecycle.rollback(model, call.actor, alias)
            except RegistryError as exc:  # no alias, or nothing earlier: the state forbids it
                raise failed_precondition(str(exc)) from None
            return {"model": model, "alias": alias, "from": current, "to": target}

        return await self._run(work, write=True)

    async def retire(self, call: Call) -> dict[str, Any]:
        """Retire a version; refused while it holds traffic unless the query says force=true."""
        model, version = _model_version(call)
        force = flag(call.query, "force")
        repository = self.repository

        def work(registry: Registry) -> dict[str, Any]:
            record = _require_version(Lifecycle(registry), model, version)
            if record.state == "retired":
                raise failed_precondition(f"version {record.label} is already retired")
            if repository is None:
                raise failed_precondition(
                    "this gateway has no local model repository (--model-repository), where "
                    "retiring moves the version's files; retire it on the host that has it")
            return version_json(retire_version(registry, repository, model, version,
                                               call.actor, force))

        return await self._run(work, write=True)

    # -- traffic policies ----------------------------------------------------------------------

    async def traffic(self, call: Call) -> dict[str, Any]:
        model = check_name(call.params["model"])
        return policy_json(await self._run(lambda registry: _require_policy(registry, model)))

    async def set_traffic(self, call: Call) -> dict[str, Any]:
        """Set a model's weights, stickiness and shadow, validated as the CLI's are; every
        version named must be registered and ready."""
        model = check_name(call.params["model"])
        body = _body(call, TrafficBody, "traffic")
        weights, sticky = body.weights, body.sticky
        shadow = None if body.shadow is None else (body.shadow["version"],
                                                   body.shadow["percent"])
        named = [*weights, *([] if shadow is None else [shadow[0]])]

        def work(registry: Registry) -> TrafficPolicy:
            _require_ready(Lifecycle(registry), model, named)
            return registry.set_traffic(model, weights, sticky=sticky, shadow=shadow,
                                        actor=call.actor)

        return policy_json(await self._run(work, write=True))

    async def clear_traffic(self, call: Call) -> dict[str, Any]:
        model = check_name(call.params["model"])

        def work(registry: Registry) -> TrafficPolicy:
            _require_policy(registry, model)
            return registry.clear_traffic(model, actor=call.actor)

        return policy_json(await self._run(work, write=True))

    # -- API keys and the audit log ------------------------------------------------------------

    async def keys(self, call: Call) -> dict[str, Any]:
        """The keys (never their secrets); `all=true` includes revoked ones."""
        everything = flag(call.query, "all")
        records = await self._run(lambda registry: registry.list_keys(everything))
        return {"keys": [key_json(r) for r in records]}

    async def create_key(self, call: Call) -> dict[str, Any]:
        """Create a key; the answer carries its secret, which is never shown again."""
        body = _body(call, KeyBody, "key")
        name = body.name

        def work(registry: Registry) -> tuple[KeyRecord, str]:
            if any(r.name == name for r in registry.list_keys(include_revoked=True)):
                raise TensorgateError(grpc.StatusCode.ALREADY_EXISTS,
                                      f"a key named {name!r} already exists (names stay taken "
                                      "after a key is revoked); choose another name")
            return registry.create_key(name, body.role, body.models, rate=body.rate,
                                       burst=body.burst, concurrency=body.concurrency,
                                       actor=call.actor)

        record, secret = await self._run(work, write=True)
        return {"key": key_json(record), "secret": secret}

    async def revoke_key(self, call: Call) -> dict[str, Any]:
        name = check_name(call.params["name"], "key name")

        def work(registry: Registry) -> KeyRecord:
            found = [r for r in registry.list_keys(include_revoked=True) if r.name == name]
            if not found:
                raise not_found(f"no key named {name!r}; GET /v2/admin/keys lists them")
            if found[0].revoked:
                raise failed_precondition(f"key {name!r} is already revoked")
            return registry.revoke_key(name, actor=call.actor)

        return key_json(await self._run(work, write=True))

    async def audit(self, call: Call) -> dict[str, Any]:
        """The newest entries first: `model` keeps one model's, `limit` (1 to 1000, 100) bounds."""
        model = call.query.get("model") or None
        if model is not None:
            check_name(model)
        limit = call.query.get("limit", "100")
        if not (is_whole(limit) and len(limit) <= 4 and 1 <= int(limit) <= MAX_AUDIT_LIMIT):
            raise invalid_argument(f"limit must be a whole number from 1 to {MAX_AUDIT_LIMIT}, "
                                   f"got {limit!r}")
        entries = await self._run(lambda registry: registry.audit_log(model, int(limit)))
        return {"entries": [entry_json(e) for e in entries]}


# -- documents ---------------------------------------------------------------------------------

def version_json(record: VersionRecord) -> dict[str, Any]:
    return record.summary()


def policy_json(policy: TrafficPolicy) -> dict[str, Any]:
    shadow = (None if policy.shadow_version is None
              else {"version": policy.shadow_version, "percent": policy.shadow_percent})
    return {"model": policy.model, "weights": dict(policy.weights), "sticky": policy.sticky,
            "shadow": shadow}


def key_json(record: KeyRecord) -> dict[str, Any]:
    return {"key_id": record.key_id, "name": record.name, "role": record.role,
            "models": list(record.models), "rate": record.rate, "burst": record.burst,
            "concurrency": record.concurrency, "created_at": record.created_at,
            "revoked": record.revoked}


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "at": entry.at, "actor": entry.actor, "action": entry.action,
            "target": entry.target, "before": entry.before, "after": entry.after}


def flag(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0", ""):
        raise invalid_argument(f"query parameter {name!r} must be true or false, got {value!r}")
    return value in ("true", "1")


def _model_version(call: Call) -> tuple[str, str]:
    return check_name(call.params["model"]), check_version(call.params["version"])


def _shares(policy: TrafficPolicy | None, production: str | None) -> dict[str, float]:
    """The percentage of requests without a version that each version gets."""
    if policy is None:
        return {production: 100.0} if production is not None else {}
    total = sum(weight for _, weight in policy.weights)
    return {version: 100.0 * weight / total for version, weight in policy.weights}


def _require_model(lifecycle: Lifecycle, model: str) -> list[VersionRecord]:
    records = lifecycle.versions(model)
    if not records:
        raise not_found(f"model {model!r} has no registered versions; GET /v2/admin/models "
                        "lists the models")
    return records


def _require_ready(lifecycle: Lifecycle, model: str, versions: Collection[object]) -> None:
    """NOT_FOUND for a model without versions, FAILED_PRECONDITION naming the ready ones when a
    named version is not one of them: a policy never routes to a version that cannot answer."""
    records = _require_model(lifecycle, model)
    ready = [r.version for r in records if r.state == "ready"]
    missing = sorted({str(v) for v in versions} - set(ready))
    if missing:
        raise failed_precondition(
            f"model {model!r} has no ready version {', '.join(map(shown, missing[:5]))}; its ready "
            f"versions: {', '.join(ready) or 'none'}")


def _require_version(lifecycle: Lifecycle, model: str, version: str) -> VersionRecord:
    record = lifecycle.get(model, version)
    if record is None:
        known = [r.version for r in lifecycle.versions(model)]
        raise not_found(f"model {model!r} has no registered version {version!r}"
                        + (f" (registered: {', '.join(known)})" if known else ""))
    return record


def _require_policy(registry: Registry, model: str) -> TrafficPolicy:
    policy = registry.get_traffic(model)
    if policy is None:
        raise not_found(f"model {model!r} has no traffic policy")
    return policy
