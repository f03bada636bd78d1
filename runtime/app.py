"""The runtime worker's assembly: load the repository, start a scheduler per version, serve gRPC."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import numpy as np

from common import tls
from common.datatypes import NUMPY_DTYPES
from common.settings import RuntimeSettings
from runtime.backends import load_backend
from runtime.backends.base import Backend
from runtime.core import RuntimeCore
from runtime.lane_server import LaneServer
from runtime.model import ModelStore, ServedModel
from runtime.repository import scan
from runtime.scheduler import Scheduler
from runtime.server import grpc_handlers

log = logging.getLogger("tensorgate.runtime")


def intra_op_threads(threads: int, instances: int) -> int:
    """Compute threads per model instance: what the event loop's own core leaves, shared."""
    return max(1, (threads - 1) // instances)


def load_models(settings: RuntimeSettings) -> ModelStore:
    """Load every version in the repository (blocking); ConfigError names what is wrong."""
    store = ModelStore()
    for source in scan(settings.model_repository):
        started = time.perf_counter()
        count = source.config.instance_count
        threads = intra_op_threads(settings.threads, count)
        backends = [load_backend(source.backend, source.artifact, source.config, threads)
                    for _ in range(count)]
        warmup_ns = min(warm_up(b, source.config.max_batch_size) for b in backends)
        store.add(ServedModel(source.config, source.version, backends, warmup_ns))
        log.info("loaded %s version %d (%s on %s, %d instance(s)) in %.2fs", source.config.name,
                 source.version, source.backend, backends[0].device, count,
                 time.perf_counter() - started)
    return store


def warm_up(backend: Backend, max_batch_size: int) -> float:
    """Run a full batch of zeros a few times, so no caller pays for lazy initialisation.

    Returns the fastest run in ns; infinite when the signature gives no shape to run.
    """
    feeds = []
    for spec in backend.inputs:
        if spec.datatype not in NUMPY_DTYPES or spec.datatype == "BYTES" or -1 in spec.shape:
            return float("inf")
        shape = (max_batch_size, *spec.shape) if max_batch_size else spec.shape
        feeds.append(np.zeros(shape, NUMPY_DTYPES[spec.datatype]))
    fastest = float("inf")
    for _ in range(3):
        started = time.perf_counter_ns()
        backend.run(feeds)
        fastest = min(fastest, time.perf_counter_ns() - started)
    return fastest


class Runtime:
    """A runtime worker: start() binds and serves, stop() drains and closes."""

    def __init__(self, settings: RuntimeSettings, store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        self.schedulers: dict[int, Scheduler] = {}
        self.core = RuntimeCore(store, self.schedulers)
        self.server: grpc.aio.Server | None = None
        self.lane: asyncio.Server | None = None
        self.grpc_address = ""
        self.lane_address = ""

    async def start(self) -> None:
        for model in self.store.all():
            scheduler = Scheduler(model, inline_ns=self.settings.inline_compute_us * 1000)
            scheduler.start()
            self.schedulers[id(model)] = scheduler
        if self.settings.listen:
            await self._start_grpc(self.settings.listen)
        if self.settings.lane:
            await self._start_lane(self.settings.lane)
        self.core.ready = True
        models = ", ".join(f"{m.name}:{m.version}" for m in self.store.all())
        log.info("runtime serving gRPC on %s and the lane on %s; models ready: %s",
                 self.grpc_address or "-", self.lane_address or "-", models or "none")

    async def _start_grpc(self, listen: str) -> None:
        limit = self.settings.max_message_bytes
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ])
        self.server.add_generic_rpc_handlers((grpc_handlers(self.core),))
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
        factory = lambda: LaneServer(self.core, limit)  # noqa: E731
        if listen.startswith("unix:"):
            self.lane = await loop.create_unix_server(factory, listen[5:])
            self.lane_address = listen
            return
        host, _, port = listen.rpartition(":")
        s = self.settings
        context = (tls.server_context(s.tls_cert, s.tls_key, s.tls_client_ca)
                   if s.tls_cert and s.tls_key else None)
        self.lane = await loop.create_server(factory, host, int(port), ssl=context)
        bound = self.lane.sockets[0].getsockname()[1]
        self.lane_address = f"{host}:{bound}"

    async def stop(self, grace: float = 5.0) -> None:
        self.core.ready = False
        if self.lane is not None:
            self.lane.close()
        if self.server is not None:
            await self.server.stop(grace)
        for scheduler in self.schedulers.values():
            await scheduler.stop()
