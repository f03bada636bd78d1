"""gRPC health checking and reflection for the gateway's gRPC port; both need no credentials.

`""` and `inference.GRPCInferenceService` are SERVING while the gateway is ready (the rule of
`/v2/health/ready`), each model name while a worker has it ready. tensorgate's feedback service
speaks JSON bytes without a .proto, so reflection does not list it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from common.errors import TensorgateError
from common.names import is_name
from common.proto import grpc_service_pb2 as pb
from common.proto import model_config_pb2
from gateway.pipeline import Pipeline

log = logging.getLogger("tensorgate.gateway")

INFERENCE_SERVICE = "inference.GRPCInferenceService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: The services reflection lists.
REFLECTED = (INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
_INDEX = pb.RepositoryIndexRequest(ready=True).SerializeToString()


def _pool() -> descriptor_pool.DescriptorPool:
    """One pool with every reflected file: ours live in their own pool, grpc's in the default."""
    pool = descriptor_pool.DescriptorPool()
    for module in (model_config_pb2, pb, health_pb2, reflection_pb2):
        proto = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        pool.Add(proto)
    return pool


class GrpcHealth:
    """Keeps the health statuses current: each round of the gateway's health interval, and at
    once on drain; a status that did not change is not set again (Watch sees changes only)."""

    def __init__(self, pipeline: Pipeline, interval_s: float) -> None:
        self.pipeline = pipeline
        self.interval = interval_s
        self.servicer = health_aio.HealthServicer()
        self.status: dict[str, int] = {}
        self._task: asyncio.Task | None = None

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        reflection.enable_server_reflection(REFLECTED, server, pool=_pool())

    async def mark(self, service: str, status: int) -> None:
        if self.status.get(service) != status:
            self.status[service] = status
            await self.servicer.set(service, status)  # type: ignore[arg-type]

    async def refresh(self) -> None:
        """One look at readiness: the gateway's, then each model's on the admitted workers."""
        ready = await self.pipeline.ready()
        for service in ("", INFERENCE_SERVICE):
            await self.mark(service, SERVING if ready else NOT_SERVING)
        models = await self._ready_models() if ready else set()
        for name in set(self.status) - {"", INFERENCE_SERVICE} - models:
            await self.mark(name, NOT_SERVING)
        for name in models:
            await self.mark(name, SERVING)

    async def _ready_models(self) -> set[str]:
        endpoints = [e for e in self.pipeline.router.endpoints if e.admitted]
        answers = await asyncio.gather(
            *(e.upstream.call("RepositoryIndex", _INDEX, self.interval) for e in endpoints),
            return_exceptions=True)
        names: set[str] = set()
        for answer in answers:
            if isinstance(answer, bytes):
                index = pb.RepositoryIndexResponse.FromString(answer)
                # NOTE: only well-formed names become services, whatever a worker reports.
                names |= {m.name for m in index.models if m.state == "READY" and is_name(m.name)}
        return names

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except (TensorgateError, OSError) as exc:
                log.warning("gRPC health: could not refresh: %s", exc)
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        """NOT_SERVING until the first look says otherwise (grpc's servicer starts SERVING)."""
        for service in ("", INFERENCE_SERVICE):
            await self.mark(service, NOT_SERVING)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def drain(self) -> None:
        """Every service NOT_SERVING now and from now on."""
        await self.stop()
        await self.servicer.enter_graceful_shutdown()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
