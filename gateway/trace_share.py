"""Trace and log settings for every gateway process: a change is stored in the registry and each
process adopts it when its watcher swaps in the new snapshot; without a registry, per process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from common import logs
from common.errors import TensorgateError, invalid_argument, not_found, unavailable
from common.names import check_name, shown
from common.policy import Principal, Snapshot
from common.proto import grpc_service_pb2 as pb
from common.registry import Registry, RegistryError
from gateway.pipeline import Headers, Pipeline
from gateway.trace_log import TRACE, update_log

log = logging.getLogger("tensorgate.gateway")


async def check_served(pipeline: Pipeline, model: str, headers: Headers) -> str:
    """`model` if it follows the naming rule and is served here, else a clear refusal: only a
    served model's name may become a row of the settings table."""
    check_name(model)
    if pipeline.served(model):
        return model
    try:
        answer = await pipeline.ask("ModelReady", pb.ModelReadyRequest(name=model)
                                    .SerializeToString(), model, "", headers, "admin")
        ready = pb.ModelReadyResponse.FromString(answer).ready
    except TensorgateError:
        ready = False
    if not ready:
        raise not_found(f"model {shown(model)} is not served here: trace settings are kept only "
                        "for served models")
    return model


@dataclass
class _Shared:
    """Where the settings are kept for every gateway process, and how to re-read it now."""

    path: Path
    refresh: Callable[[], Awaitable[None]]
    #: The JSON text last adopted or written, by setting name: only a change is adopted.
    adopted: dict[str, bytes] = field(default_factory=dict)


_shared: _Shared | None = None
_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


def share(path: Path | None, refresh: Callable[[], Awaitable[None]], snapshot: Snapshot) -> None:
    """Keep this process's settings in the registry at `path` (None: this process only), and
    adopt the ones stored there now. The gateway calls it once, at start."""
    global _shared
    _shared = None if path is None else _Shared(path, refresh)
    adopt(snapshot.settings)


async def on_change(_: Snapshot, new: Snapshot) -> None:
    """The registry watcher's hook: adopt what another gateway process changed."""
    adopt(new.settings)


def adopt(settings: Mapping[str, str]) -> None:
    shared = _shared
    if shared is None:
        return
    for name, apply in (("trace", TRACE.adopt), ("logging", _adopt_log)):
        text = settings.get(name)
        if text is None or text.encode() == shared.adopted.get(name):
            continue
        shared.adopted[name] = text.encode()
        try:
            apply(orjson.loads(text))
        except (orjson.JSONDecodeError, TensorgateError, AttributeError, TypeError) as exc:
            log.warning("the registry's %s settings were not adopted: %s", name, exc)


def _adopt_log(state: dict[str, Any]) -> None:
    level = state.get("level")
    if level not in _LEVELS:
        raise invalid_argument(f"log level {shown(level)} is not one of {_LEVELS}")
    logs.set_level(level)


async def _publish(name: str, value: Any, principal: Principal) -> None:
    """Store a change for every gateway process; UNAVAILABLE when the registry cannot take it."""
    shared = _shared
    if shared is None:
        return

    def write() -> None:
        with Registry(shared.path, create=False) as registry:
            registry.set_setting(name, value, principal.subject)

    try:
        await asyncio.to_thread(write)
    except (RegistryError, sqlite3.Error) as exc:
        log.error("could not store the %s settings in the registry: %s", name, exc)
        raise unavailable(f"the {name} settings were not changed: the registry could not store "
                          "them (see the gateway's log); try again") from None
    shared.adopted[name] = json.dumps(value, sort_keys=True).encode()  # as the registry has it
    await shared.refresh()


async def _catch_up() -> None:
    """Adopt what other processes stored before changing anything: the whole state is written,
    so this keeps the window in which two changes at once lose one to a registry read."""
    if _shared is not None:
        await _shared.refresh()


async def change_trace(changes: dict[str, Any], model: str | None,
                       principal: Principal) -> dict[str, Any]:
    """Change trace settings here and for every gateway process; answer the ones in force."""
    await _catch_up()
    before = TRACE.state()
    answer = TRACE.update(changes, model)
    try:
        await _publish("trace", TRACE.state(), principal)
    except TensorgateError:
        TRACE.adopt(before)
        raise
    return answer


async def change_log(changes: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """Change the log level here and for every gateway process; answer the settings in force."""
    await _catch_up()
    before = logs.level()
    answer = update_log(changes)
    try:
        await _publish("logging", {"level": logs.level()}, principal)
    except TensorgateError:
        logs.set_level(before)
        raise
    return answer
