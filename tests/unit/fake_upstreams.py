"""A scripted stand-in for a runtime endpoint, shared by the balance, health and forward tests."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from common.settings import GatewaySettings
from gateway.health import Endpoint, Health
from gateway.metrics import GatewayMetrics

READY = pb.ServerReadyResponse(ready=True).SerializeToString()
NOT_READY = pb.ServerReadyResponse(ready=False).SerializeToString()


class FakeUpstream:
    """Answers with `answer`, or raises `error`; records each call and its timeout."""

    def __init__(self, address: str, answer: bytes = b"ok", outstanding: int = 0) -> None:
        self.address = address
        self.outstanding = outstanding
        self.answer = answer
        self.error: TensorgateError | None = None
        self.before: Callable[[], None] | None = None
        self.calls: list[tuple[str, float | None]] = []
        self.closed = False

    async def call(self, name: str, request: bytes, timeout: float | None) -> bytes:
        self.calls.append((name, timeout))
        if self.before is not None:
            self.before()
        if self.error is not None:
            raise self.error
        return self.answer

    async def close(self) -> None:
        self.closed = True


def health(eject_after: int = 3, interval: float = 1.0,
           registry: CollectorRegistry | None = None) -> Health:
    settings = GatewaySettings(health_interval_s=interval, eject_after_failures=eject_after)
    return Health(settings, GatewayMetrics(registry or CollectorRegistry()))


def endpoints(*outstanding: int) -> list[Endpoint]:
    return [Endpoint(FakeUpstream(f"10.0.0.{i}:8012", outstanding=n))
            for i, n in enumerate(outstanding)]


def fake(endpoint: Endpoint) -> FakeUpstream:
    assert isinstance(endpoint.upstream, FakeUpstream)
    return endpoint.upstream
