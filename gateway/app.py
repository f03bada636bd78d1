"""The gateway's assembly: upstream channels, the pipeline, the HTTP, gRPC and metrics servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import grpc
import uvicorn
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from common.settings import GatewaySettings
from gateway.discover import Discovery
from gateway.grpc_server import GrpcTransport
from gateway.health import Health
from gateway.http_server import HttpTransport
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.route import Router
from gateway.upstream import Upstream, connect

log = logging.getLogger("tensorgate.gateway")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway's owner decides when to stop."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()


class Gateway:
    """A gateway process: start() binds every listener, stop() closes them in order."""

    def __init__(self, settings: GatewaySettings, registry: CollectorRegistry = REGISTRY) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics(registry)
        self.router = Router(Health(settings, self.metrics))
        self.discovery = Discovery(settings, self.router, self.dial)
        self.pipeline = Pipeline(settings, self.router, self.metrics)
        self.grpc_server: grpc.aio.Server | None = None
        self.http_server: _Uvicorn | None = None
        self._http_task: asyncio.Task | None = None
        self.http_port = 0
        self.grpc_port = 0

    def dial(self, address: str) -> Upstream:
        """The upstream for one runtime address (discovery calls it for each one it finds)."""
        return connect(address, self.settings.max_message_bytes)

    async def start(self) -> None:
        s = self.settings
        await self.discovery.start()
        self.router.health.start()
        limit = s.max_message_bytes
        self.grpc_server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", int(s.reuse_port)),
        ])
        self.grpc_server.add_generic_rpc_handlers((GrpcTransport(self.pipeline).handlers(),))
        self.grpc_port = self.grpc_server.add_insecure_port(f"{s.host}:{s.grpc_port}")
        await self.grpc_server.start()
        sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if s.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((s.host, s.http_port))
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(HttpTransport(self.pipeline, limit), http="httptools",
                                loop="none", lifespan="off", access_log=False,
                                log_level="warning", proxy_headers=False,
                                server_header=False)
        self.http_server = _Uvicorn(config)
        self._http_task = asyncio.get_running_loop().create_task(self.http_server.serve([sock]))
        up = asyncio.ensure_future(self.http_server.up.wait())
        await asyncio.wait((up, self._http_task), return_when=asyncio.FIRST_COMPLETED)
        if self._http_task.done():
            up.cancel()
            self._http_task.result()
        log.info("gateway serving HTTP on %s:%d and gRPC on %s:%d; runtime workers: %s",
                 s.host, self.http_port, s.host, self.grpc_port,
                 ", ".join(s.runtime_endpoints))

    def start_metrics(self) -> None:
        if self.settings.metrics_port >= 0:
            start_http_server(self.settings.metrics_port, self.settings.host)
            log.info("metrics on http://%s:%d/metrics", self.settings.host,
                     self.settings.metrics_port)

    async def stop(self, grace: float = 5.0) -> None:
        if self.http_server is not None and self._http_task is not None:
            self.http_server.should_exit = True
            await self._http_task
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace)
        await self.router.health.stop()
        await self.discovery.stop()
        await self.router.close()
