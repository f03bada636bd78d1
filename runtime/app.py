"""The runtime worker's assembly: load the repository, start a scheduler per version, serve gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import weakref
from collections.abc import Awaitable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from common import tls
from common.errors import TensorgateError
from common.grpc_options import server_options
from common.model_config import ConfigError
from common.names import is_name, shown
from common.policy import Snapshot
from common.registry.watch import RegistryWatcher
from common.settings import RuntimeSettings
from runtime import metrics as runtime_metrics
from runtime.core import RuntimeCore
from runtime.lane_listen import UnixLane
from runtime.lane_server import Greeting, LaneServer
from runtime.loading import load_version
from runtime.model import ModelStore, ServedModel
from runtime.reload import Reloader
from runtime.repository import scan_each
from runtime.scheduler import Scheduler
from runtime.server import grpc_handlers

log = logging.getLogger("tensorgate.runtime")
#: How often Triton's counters catch up with the statistics (a scrape sees counts this old).
PUBLISH_EVERY_S = 1.0


def load_models(settings: RuntimeSettings,
                metrics: runtime_metrics.RuntimeMetrics | None = None) -> ModelStore:
    """Load every version in the repository (blocking); a model that does not load is logged
    and skipped, so one broken folder never keeps the others from serving. ConfigError when
    every model is broken: a worker with nothing to serve says why and stops."""
    metrics = metrics or runtime_metrics.default_metrics(settings.triton_metrics)
    store = ModelStore()
    skipped: list[str] = []
    for name, sources in scan_each(settings.model_repository):
        try:
            if isinstance(sources, ConfigError):
                raise sources
            models = [load_version(s, settings.threads, metrics) for s in sources]
        except Exception as exc:  # onnxruntime and torch raise their own kinds
            reason = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            skipped.append(one_line(reason))
            log.error("model %s skipped, not served: %s", shown(name), skipped[-1])
            if is_name(name):  # for the repository index, with paths inside the repository
                store.mark_unavailable(name, one_line(reason.replace(
                    f"{settings.model_repository}/", ""), 300))
            continue
        for model in models:
            store.add(model)
    if skipped and not store.names():
        raise ConfigError(f"no model loads, nothing to serve: {skipped[0]}")
    return store


def one_line(text: str, limit: int = 500) -> str:
    """A reason fit for one log line: its lines joined, cut to `limit` characters."""
    joined = " ".join(text.split())
    return joined if len(joined) <= limit else joined[:limit] + "…"


class Runtime:
    """A runtime worker: start() binds and serves, stop() drains and closes."""

    def __init__(self, settings: RuntimeSettings, store: ModelStore,
                 metrics: runtime_metrics.RuntimeMetrics | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or runtime_metrics.default_metrics(settings.triton_metrics)
        self.schedulers: dict[int, Scheduler] = {}
        self.reloader = Reloader(
            settings.model_repository, store, self.schedulers,
            lambda source: load_version(source, settings.threads, self.metrics, check=True),
            self._start_scheduler)
        self.core = RuntimeCore(store, self.schedulers, self.reloader)
        self.registry = RegistryWatcher(settings.registry_path, settings.registry_refresh_s,
                                        self._registry_changed)
        self._watch: asyncio.Task | None = None
        self._publish: asyncio.Task | None = None
        self.server: grpc.aio.Server | None = None
        self.lane: asyncio.Server | UnixLane | None = None
        #: The gateways' lane connections, so a stop can stop reading new calls from them.
        self._lanes: weakref.WeakSet[LaneServer] = weakref.WeakSet()
        self.grpc_address = ""
        self.lane_address = ""
        #: gRPC health checking's "" service, on the gRPC port: SERVING while ready.
        self.health: health_aio.HealthServicer | None = None

    async def start(self) -> None:
        for model in self.store.all():
            self.schedulers[id(model)] = self._start_scheduler(model)
        if self.settings.listen:
            await self._start_grpc(self.settings.listen)
        if self.settings.lane:
            await self._start_lane(self.settings.lane)
        self._watch = asyncio.get_running_loop().create_task(self.registry.run())
        self._publish = asyncio.get_running_loop().create_task(self._publish_metrics())
        if self.settings.metrics_port >= 0:
            self._start_metrics(self.settings.metrics_port)
        self.core.ready = True
        if self.health is not None:
            await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        models = ", ".join(f"{m.name}:{m.version}" for m in self.store.all())
        log.info("runtime serving gRPC on %s and the lane on %s; models ready: %s",
                 self.grpc_address or "-", self.lane_address or "-", models or "none")

    async def _registry_changed(self, old: Snapshot, new: Snapshot) -> None:
        """Reload each model whose ready versions changed: registered, retired or replaced."""
        for name in sorted(set(old.ready) | set(new.ready)):
            if old.ready.get(name) == new.ready.get(name):
                continue
            if not is_name(name):  # a registry row is no path into the filesystem
                log.error("model %s not reloaded: not a model name", shown(name))
                continue
            try:
                if (self.settings.model_repository / name).is_dir():
                    await self.reloader.load(name)
                elif self.store.loaded(name):
                    await self.reloader.unload(name)
            except TensorgateError as exc:
                log.error("model %s not reloaded: %s", name, exc.message)

    async def _publish_metrics(self) -> None:
        """Carry the statistics over to the counters derived from them, once a second."""
        while True:
            await asyncio.sleep(PUBLISH_EVERY_S)
            for scheduler in list(self.schedulers.values()):
                scheduler.publish_metrics()

    def _start_scheduler(self, model: ServedModel) -> Scheduler:
        scheduler = Scheduler(model, inline_ns=self.settings.inline_compute_us * 1000,
                              metrics=self.metrics.model(model.name, str(model.version)))
        scheduler.start()
        return scheduler

    def _start_metrics(self, port: int) -> None:
        listen = self.settings.listen
        tcp = listen and not listen.startswith("unix:")
        host = listen.rpartition(":")[0] if tcp else "127.0.0.1"
        # NOTE: read at start-up: a supervisor that set a multiprocess directory serves it.
        runtime_metrics.serve(port, host.strip("[]"), os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
                              self.settings.triton_metrics)

    async def _requests_done(self, timeout: float) -> None:
        """Wait, up to `timeout`, until no model version has a request in flight or queued."""
        waits = []
        for model in self.store.all():
            if model.in_flight:
                if model.drained is None:
                    model.drained = asyncio.Event()
                waits.append(asyncio.ensure_future(model.drained.wait()))
        if not waits:
            return
        _, left = await asyncio.wait(waits, timeout=timeout)
        for wait in left:
            wait.cancel()
        if left:
            log.warning("runtime stopping with requests of %d model versions still in flight "
                        "after %.1fs", len(left), timeout)

    async def _start_grpc(self, listen: str) -> None:
        limit = self.settings.max_message_bytes
        self.server = grpc.aio.server(options=server_options(self.settings.grpc, limit))
        self.server.add_generic_rpc_handlers((grpc_handlers(self.core),))
        # NOTE: gRPC health checking for grpc: probes: NOT_SERVING until start() is done.
        self.health = health_aio.HealthServicer()
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        s = self.settings
        if s.tls_cert and s.tls_key:
            credentials = tls.grpc_server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca)
            port = self.server.add_secure_port(listen, credentials)
        else:
            port = self.server.add_insecure_port(listen)
        host = listen.rpartition(":")[0]
        self.grpc_address = listen if listen.startswith("unix:") else f"{host}:{port}"
        await self.server.start()

    async def _start_lane(self, listen: str) -> None:
        loop = asyncio.get_running_loop()
        limit = self.settings.max_message_bytes
        def factory(greeting: Greeting | None = None) -> LaneServer:
            connection = LaneServer(self.core, limit, greeting)
            self._lanes.add(connection)
            return connection

        if listen.startswith("unix:"):
            self.lane = UnixLane(listen[5:], factory)
            self.lane.start()
            self.lane_address = listen
            return
        host, _, port = listen.rpartition(":")
        s = self.settings
        context = (tls.server_context(s.tls_cert, s.tls_key, s.tls_client_ca)
                   if s.tls_cert and s.tls_key else None)
        self.lane = await loop.create_server(factory, host, int(port), ssl=context)
        bound = self.lane.sockets[0].getsockname()[1]
        self.lane_address = f"{host}:{bound}"

    async def drain(self) -> None:
        """SIGTERM's shutdown: not ready first (gateways' probes move away), serving as usual
        for the grace period; then stop() lets requests in flight and queued finish."""
        s = self.settings
        self.core.ready = False
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        log.info("runtime draining: not ready; stops taking requests in %.1fs, requests in "
                 "flight get up to %.1fs", s.drain_grace_s, s.drain_timeout_s)
        # NOTE: a plain sleep is right here: only time lets the gateways' probes notice.
        await asyncio.sleep(s.drain_grace_s)
        await self.stop(grace=s.drain_timeout_s)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests; those in flight and queued get `grace` seconds to finish."""
        self.core.ready = False
        for task in (self._watch, self._publish):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.registry.close()
        if self.lane is not None:
            self.lane.close()
        for connection in self._lanes:
            # NOTE: calls sent from now on stay unread; closing the connection fails them
            # with UNAVAILABLE at the gateway, which retries them on another worker.
            if connection.transport is not None:
                connection.transport.pause_reading()
        waits: list[Awaitable[None]] = [self._requests_done(grace)]
        if self.server is not None:
            waits.append(self.server.stop(grace))
        await asyncio.gather(*waits)
        for scheduler in self.schedulers.values():
            await scheduler.stop()
        self.core.regions.close()
        for model in self.store.all():
            self.metrics.set_state(model.name, str(model.version), "UNAVAILABLE")
        self.reloader.close()
