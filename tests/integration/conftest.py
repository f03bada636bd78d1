"""Real servers on 127.0.0.1 port 0: a runtime worker and a gateway in front of it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from common.settings import AuthSettings, GatewaySettings, RuntimeSettings
from gateway.app import Gateway
from runtime.app import Runtime, load_models

NO_AUTH = AuthSettings(enabled=False)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Servers:
    runtime_grpc: str
    gateway_http: str
    gateway_grpc: str
    repository: Path
    metrics: CollectorRegistry


class Background:
    """Runs the servers on their own event loop in a thread, so blocking clients can call them."""

    def __init__(self, repository: Path, **gateway: Any) -> None:
        self.repository = repository
        self.overrides = {"auth": NO_AUTH, **gateway}
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.servers: Servers | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:
            self.error = exc
            self.started.set()

    async def _serve(self) -> None:
        settings = RuntimeSettings(model_repository=self.repository, listen="127.0.0.1:0",
                                   lane="127.0.0.1:0", threads=2)
        runtime = Runtime(settings, load_models(settings))
        await runtime.start()
        address = runtime.lane_address
        registry = CollectorRegistry()
        gateway = Gateway(GatewaySettings(host="127.0.0.1", http_port=0, grpc_port=0,
                                          metrics_port=-1, runtime_endpoints=(address,),
                                          **self.overrides),
                          registry=registry)
        await gateway.start()
        self.servers = Servers(runtime.grpc_address, f"127.0.0.1:{gateway.http_port}",
                               f"127.0.0.1:{gateway.grpc_port}", self.repository, registry)
        self.stop = asyncio.Event()
        self.started.set()
        await self.stop.wait()
        await gateway.stop(grace=1.0)
        await runtime.stop(grace=1.0)

    def __enter__(self) -> Servers:
        self.thread.start()
        self.started.wait(120)
        if self.error is not None:
            raise self.error
        assert self.servers is not None
        return self.servers

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    with Background(ROOT / "models") as running:
        yield running
