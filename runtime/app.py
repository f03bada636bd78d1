"""The runtime worker's assembly: load the repository, start a scheduler per version, serve gRPC."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import numpy as np

from common.datatypes import NUMPY_DTYPES
from common.proto import grpc_service_pb2_grpc as pb_grpc
from common.settings import RuntimeSettings
from runtime.backends import load_backend
from runtime.backends.base import Backend
from runtime.model import ModelStore, ServedModel
from runtime.repository import scan
from runtime.scheduler import Scheduler
from runtime.server import RuntimeService

log = logging.getLogger("tensorgate.runtime")


def load_models(settings: RuntimeSettings) -> ModelStore:
    """Load every version in the repository (blocking); ConfigError names what is wrong."""
    store = ModelStore()
    for source in scan(settings.model_repository):
        started = time.perf_counter()
        count = source.config.instance_count
        threads = max(1, settings.threads // count)
        backends = [load_backend(source.backend, source.artifact, source.config, threads)
                    for _ in range(count)]
        for backend in backends:
            warm_up(backend, source.config.max_batch_size > 0)
        store.add(ServedModel(source.config, source.version, backends))
        log.info("loaded %s version %d (%s on %s, %d instance(s)) in %.2fs", source.config.name,
                 source.version, source.backend, backends[0].device, count,
                 time.perf_counter() - started)
    return store


def warm_up(backend: Backend, batched: bool) -> None:
    """One batch of zeros, so the first caller does not pay for lazy initialisation."""
    feeds = []
    for spec in backend.inputs:
        if spec.datatype not in NUMPY_DTYPES or spec.datatype == "BYTES" or -1 in spec.shape:
            return
        shape = (1, *spec.shape) if batched else spec.shape
        feeds.append(np.zeros(shape, NUMPY_DTYPES[spec.datatype]))
    for _ in range(2):
        backend.run(feeds)


class Runtime:
    """A runtime worker: start() binds and serves, stop() drains and closes."""

    def __init__(self, settings: RuntimeSettings, store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        self.schedulers: dict[int, Scheduler] = {}
        self.service = RuntimeService(store, self.schedulers)
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        for model in self.store.all():
            scheduler = Scheduler(model)
            scheduler.start()
            self.schedulers[id(model)] = scheduler
        limit = self.settings.max_message_bytes
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, self.server)
        listen = self.settings.listen
        port = self.server.add_insecure_port(listen)
        host = listen.rpartition(":")[0]
        self.address = listen if listen.startswith("unix:") else f"{host}:{port}"
        await self.server.start()
        self.service.ready = True
        models = ", ".join(f"{m.name}:{m.version}" for m in self.store.all())
        log.info("runtime serving gRPC on %s; models ready: %s", self.address, models or "none")
        return self.address

    async def stop(self, grace: float = 5.0) -> None:
        self.service.ready = False
        if self.server is not None:
            await self.server.stop(grace)
        for scheduler in self.schedulers.values():
            await scheduler.stop()


async def serve_until(runtime: Runtime, stop: asyncio.Event) -> None:
    await runtime.start()
    await stop.wait()
    await runtime.stop()
