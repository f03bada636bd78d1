"""An in-process runtime worker serving digits beside loadtest/sleepy.py's models, behind an
in-process gateway, both on an event loop in a thread: for tests of deadlines and cancels."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from prometheus_client import CollectorRegistry

from common.settings import AuthSettings, GatewaySettings, RuntimeSettings
from gateway.app import Gateway
from loadtest.sleepy import store_with
from runtime.app import Runtime

ROOT = Path(__file__).resolve().parents[2]
#: The sleepy models to add, given the event that releases the stuck ones.
Models = Callable[[threading.Event], list[Any]]


class Stack:
    """digits and `models(release)` on one runtime worker, behind a gateway whose default
    deadline is `deadline_s`; `release` frees the stuck ones (set on exit)."""

    def __init__(self, models: Models, deadline_s: float) -> None:
        self.models = models
        self.deadline_s = deadline_s
        self.release = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _start(self) -> None:
        settings = RuntimeSettings(model_repository=ROOT / "models", listen="127.0.0.1:0",
                                   lane="127.0.0.1:0", threads=1)
        self.runtime = Runtime(settings, store_with(settings, *self.models(self.release)))
        await self.runtime.start()
        self.gateway = Gateway(GatewaySettings(
            host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=-1,
            runtime_endpoints=(self.runtime.lane_address,), default_timeout_s=self.deadline_s,
            auth=AuthSettings(enabled=False)), registry=CollectorRegistry())
        await self.gateway.start()

    async def _stop(self) -> None:
        await self.gateway.stop(grace=1.0)
        await self.runtime.stop(grace=1.0)

    def __enter__(self) -> Self:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(120)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
