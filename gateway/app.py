"""The gateway's assembly: upstream channels, the pipeline, the HTTP, gRPC and metrics servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import sqlite3
import ssl
from collections.abc import Awaitable, Iterator
from typing import Any

import grpc
import uvicorn
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from common import tls
from common.arena import Arena
from common.arena import supported as arena_supported
from common.grpc_options import server_options
from common.registry import Registry, RegistryError
from common.registry.watch import RegistryWatcher
from common.settings import GatewaySettings
from gateway import trace_share
from gateway.admin_api import AdminApi
from gateway.answer_store import answers_path
from gateway.answers import AnswerLog
from gateway.discover import Discovery
from gateway.edge import EdgeBuilder
from gateway.grpc_health import GrpcHealth
from gateway.grpc_server import GrpcTransport
from gateway.health import Health
from gateway.http_protocol import HttpLimits, protocol_class
from gateway.http_server import HttpTransport
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.quota import Quotas
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


def _uvicorn_tls(s: GatewaySettings) -> dict[str, Any]:
    """uvicorn's TLS options: HTTPS with our certificate; client certificates with a CA."""
    if not (s.tls.cert and s.tls.key):
        return {}
    tls.server_context(s.tls.cert, s.tls.key, s.tls.client_ca)  # a bad file: a ConfigError now
    options: dict[str, Any] = {"ssl_certfile": str(s.tls.cert), "ssl_keyfile": str(s.tls.key)}
    if s.tls.client_ca:
        options |= {"ssl_ca_certs": str(s.tls.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options


def lane_arena(size_mb: int, metrics: GatewayMetrics) -> Arena | None:
    """This process's arena for tensors sent by reference on unix lanes; None: off (0 MiB,
    or no memfds on this platform)."""
    if size_mb <= 0 or not arena_supported():
        return None
    arena = Arena(size_mb << 20, f"tensorgate-lane-in-{os.getpid()}")
    slots, used = metrics.lane_arena_slots, metrics.lane_arena_bytes

    def show(count: int, size: int) -> None:
        slots.set(count)
        used.set(size)

    arena.on_change = show
    return arena


class Gateway:
    """A gateway process: start() binds every listener, stop() closes them in order."""

    def __init__(self, settings: GatewaySettings, registry: CollectorRegistry = REGISTRY,
                 edge: EdgeBuilder | None = None) -> None:
        self.settings = settings
        #: Builds edge bundles (blocking; the HTTP transport runs it in a thread); None: none.
        self.edge = edge
        self.metrics = GatewayMetrics(registry)
        self.arena = lane_arena(settings.lane_arena_mb, self.metrics)
        self.router = Router(Health(settings, self.metrics))
        self.discovery = Discovery(settings, self.router, self.dial)
        self.registry = RegistryWatcher(settings.registry_path, settings.registry_refresh_s,
                                        on_state=self.metrics.registry_ok.set,
                                        on_change=trace_share.on_change,
                                        repository=settings.model_repository, sweep=True)
        # NOTE: trace and log settings changed on any gateway process reach every one.
        trace_share.share(settings.registry_path, self.registry.refresh_now, self.registry.snapshot)
        #: Routed answers (of A/B models, or all), for `tensorgate ab report`: answers.db
        #: beside the registry.
        self.answers = (AnswerLog(answers_path(settings.registry_path),
                                  max_answers=settings.answers_max_rows,
                                  feedback_per_caller=settings.feedback_per_caller,
                                  max_feedback=settings.feedback_max_rows)
                        if settings.registry_path is not None and settings.record_answers != "off"
                        else None)
        self.pipeline = Pipeline(settings, self.router, self.metrics,
                                 lambda: self.registry.snapshot, Quotas(settings.quota_path),
                                 self.audit, self.answers, refresh=self.registry.refresh_if_due)
        self._registry_task: asyncio.Task | None = None
        self.grpc_health = GrpcHealth(self.pipeline, settings.health_interval_s)
        self.grpc_server: grpc.aio.Server | None = None
        self.http_server: _Uvicorn | None = None
        self._http_task: asyncio.Task | None = None
        self.http_port = 0
        self.grpc_port = 0

    async def audit(self, actor: str, action: str, target: str, after: Any) -> None:
        """Append to the registry's audit log, off the event loop; no registry: nothing."""
        path = self.settings.registry_path
        if path is None:
            return

        def write() -> None:
            with Registry(path, create=False) as registry:
                registry.audit(actor, action, target, None, after)

        try:
            await asyncio.to_thread(write)
        except (RegistryError, sqlite3.Error) as exc:
            log.warning("could not record %s of %s in the audit log: %s", action, target, exc)

    def dial(self, address: str) -> Upstream:
        """The upstream for one runtime address (discovery calls it for each one it finds)."""
        return connect(address, self.settings.max_message_bytes, self.settings.tls, self.arena)

    async def start(self) -> None:
        s = self.settings
        await self.discovery.start()
        self.router.health.start()
        self._registry_task = asyncio.get_running_loop().create_task(self.registry.run())
        if self.answers is not None:
            self.answers.start()
        limit = s.max_message_bytes
        self.grpc_server = grpc.aio.server(
            options=server_options(s.grpc, limit, s.reuse_port))
        grpc_transport = GrpcTransport(self.pipeline)
        self.grpc_server.add_generic_rpc_handlers((grpc_transport.handlers(),
                                                   grpc_transport.feedback_handlers()))
        # NOTE: registered as services of their own, outside the transport's handlers, so they
        # ask for no credentials: Kubernetes' grpc probes send none.
        self.grpc_health.add_to(self.grpc_server)
        await self.grpc_health.start()
        address = f"{s.host}:{s.grpc_port}"
        if s.tls.cert and s.tls.key:
            credentials = tls.grpc_server_credentials(s.tls.cert, s.tls.key, s.tls.client_ca)
            self.grpc_port = self.grpc_server.add_secure_port(address, credentials)
        else:
            self.grpc_port = self.grpc_server.add_insecure_port(address)
        await self.grpc_server.start()
        sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if s.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((s.host, s.http_port))
        self.http_port = sock.getsockname()[1]
        transport = HttpTransport(self.pipeline, limit,
                                  AdminApi(s.registry_path, s.model_repository,
                                           guard=self.registry.check_file,
                                           after_write=self.registry.refresh_now), self.edge,
                                  self.arena)
        limits = HttpLimits(s.http_header_timeout_s, s.http_body_timeout_s,
                            s.http_max_header_bytes, s.http_max_connections)
        config = uvicorn.Config(transport, http=protocol_class(limits),  # type: ignore[arg-type]
                                timeout_keep_alive=s.http_keep_alive_s,  # type: ignore[arg-type]
                                loop="none", lifespan="off", access_log=False,
                                log_level="warning", proxy_headers=False,
                                server_header=False, **_uvicorn_tls(s))
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

    async def drain(self) -> None:
        """SIGTERM's shutdown: readiness false first; the listeners stay open for the grace
        period, so load balancers see it and move away; then stop() lets requests in flight
        finish, for up to `drain_timeout_s`."""
        s = self.settings
        self.pipeline.admission.drain()
        await self.grpc_health.drain()
        log.info("gateway draining: not ready; listeners close in %.1fs, requests in flight "
                 "get up to %.1fs", s.drain_grace_s, s.drain_timeout_s)
        # NOTE: a plain sleep is right here: nothing but time tells a load balancer to move.
        await asyncio.sleep(s.drain_grace_s)
        await self.stop(grace=s.drain_timeout_s)
        log.info("gateway drained: %d requests were left in flight",
                 self.pipeline.admission.in_flight)

    async def _stop_http(self, grace: float) -> None:
        if self.http_server is not None and self._http_task is not None:
            # NOTE: uvicorn takes whole seconds here.
            self.http_server.config.timeout_graceful_shutdown = max(1, math.ceil(grace))
            self.http_server.should_exit = True
            await self._http_task

    async def stop(self, grace: float = 5.0) -> None:
        """Close both listeners at once; requests in flight on either get `grace` seconds."""
        stopping: list[Awaitable[None]] = [self._stop_http(grace)]
        if self.grpc_server is not None:
            stopping.append(self.grpc_server.stop(grace))
        await asyncio.gather(*stopping)
        await self.grpc_health.stop()
        await self.router.health.stop()
        if self._registry_task is not None:
            self._registry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._registry_task
        self.registry.close()
        if self.answers is not None:
            await self.answers.stop()  # NOTE: both listeners are closed: no answer comes now
        await self.pipeline.close()
        await self.discovery.stop()
        await self.router.close()
        if self.arena is not None:
            self.arena.close()  # NOTE: the runtimes' mappings keep the memory until they close
