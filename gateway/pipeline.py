"""The gateway's data path, in order: route → balance → forward. Knows nothing of HTTP or gRPC.

Status and latency are recorded once per request, in one `finally`.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from common.settings import GatewaySettings
from gateway.forward import Forward
from gateway.metrics import GatewayMetrics
from gateway.route import Router


class Pipeline:
    def __init__(self, settings: GatewaySettings, router: Router, metrics: GatewayMetrics) -> None:
        self.router = router
        self.metrics = metrics
        self.default_timeout = settings.default_timeout_s
        self.forward = Forward(router.health, metrics)

    async def infer(
        self, request: bytes, model: str, version: str, timeout: float | None, protocol: str
    ) -> bytes:
        """Forward a serialized ModelInferRequest; the answer's bytes come back untouched."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        self.metrics.in_flight.inc()
        try:
            pool = self.router.pool(model, version)
            return await self.forward(pool, model, "ModelInfer", request,
                                      timeout or self.default_timeout)
        except TensorgateError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self.metrics.in_flight.dec()
            label = model if code != grpc.StatusCode.NOT_FOUND else "_unknown"
            self.metrics.observe(label, protocol, code.name, time.perf_counter() - started)

    async def ask(self, method: str, request: bytes, model: str = "", version: str = "") -> bytes:
        """A control-plane call (metadata, config, statistics, index) to a worker of the model."""
        pool = self.router.pool(model, version)
        return await self.forward(pool, model, method, request, self.default_timeout)

    async def ready(self) -> bool:
        """Ready when at least one admitted runtime worker says it is."""
        for endpoint in self.router.endpoints:
            if not endpoint.admitted:
                continue
            try:
                answer = await endpoint.upstream.call("ServerReady", b"", 2.0)
            except TensorgateError:
                continue
            if pb.ServerReadyResponse.FromString(answer).ready:
                return True
        return False
