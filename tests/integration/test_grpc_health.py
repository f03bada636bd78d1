"""gRPC health checking and reflection on the gateway's gRPC port, asked without credentials of a
gateway that wants them; the statuses follow readiness, drain included."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client import CollectorRegistry

from common.proto import grpc_service_pb2 as pb
from common.settings import AuthSettings, GatewaySettings, RuntimeSettings
from gateway.app import Gateway
from runtime.app import Runtime, load_models
from tests.waiting import until

ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INFERENCE = "inference.GRPCInferenceService"


class Stack:
    """A runtime worker and a gateway that asks every caller for a key (none are issued)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _start(self) -> None:
        settings = RuntimeSettings(model_repository=ROOT / "models", listen="127.0.0.1:0",
                                   lane="127.0.0.1:0", threads=1)
        self.runtime = Runtime(settings, load_models(settings))
        await self.runtime.start()
        self.gateway = Gateway(GatewaySettings(
            host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=-1,
            runtime_endpoints=(self.runtime.lane_address,), auth=AuthSettings(),
            health_interval_s=0.2, drain_grace_s=30.0), registry=CollectorRegistry())
        await self.gateway.start()

    def run(self, coroutine: object, within_s: float = 120) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(within_s)  # type: ignore[arg-type]

    def __enter__(self) -> Stack:
        self.thread.start()
        self.run(self._start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.gateway.grpc_port}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()
        self.run(self.gateway.stop(grace=1.0), 60)
        self.run(self.runtime.stop(grace=1.0), 60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack() as running:
        yield running


def status_of(stack: Stack, service: str) -> int:
    health = health_pb2_grpc.HealthStub(stack.channel)
    return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def serving(stack: Stack, service: str) -> bool:
    return status_of(stack, service) == SERVING


def test_the_server_and_its_models_are_serving_without_credentials(stack: Stack) -> None:
    for service in ("", INFERENCE, "digits"):
        until(functools.partial(serving, stack, service), f"{service!r} SERVING", 30.0,
              every_s=0.05)
    # the same caller, without a key, is refused the inference service itself
    metadata = stack.channel.unary_unary(
        "/inference.GRPCInferenceService/ServerMetadata",
        request_serializer=pb.ServerMetadataRequest.SerializeToString)
    with pytest.raises(grpc.RpcError) as caught:
        metadata(pb.ServerMetadataRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_runtime_worker_serves_grpc_health_too(stack: Stack) -> None:
    with grpc.insecure_channel(stack.runtime.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == SERVING


def test_a_stream_without_a_key_is_refused_when_it_opens(stack: Stack) -> None:
    call = stack.channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString)
    with pytest.raises(grpc.RpcError) as caught:
        list(call(iter([pb.ModelInferRequest(model_name="digits")]), timeout=30))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_unknown_model_is_not_found(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        status_of(stack, "no-such-model")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_our_services_and_resolves_their_methods(stack: Stack) -> None:
    database = ProtoReflectionDescriptorDatabase(stack.channel)
    services = set(database.get_services())
    assert {INFERENCE, "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert "tensorgate.Feedback" not in services  # JSON bytes, no .proto to reflect
    found = database.FindFileContainingSymbol(INFERENCE)
    methods = {m.name for s in found.service for m in s.method}
    assert {"ModelInfer", "ModelStreamInfer", "ServerReady"} <= methods


def test_drain_turns_every_status_to_not_serving_and_watch_sees_it(stack: Stack) -> None:
    """Last in the module: a drained gateway stays drained."""
    health = health_pb2_grpc.HealthStub(stack.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=INFERENCE), timeout=60)
    assert next(watch).status == SERVING
    draining = asyncio.run_coroutine_threadsafe(stack.gateway.drain(), stack.loop)
    try:
        assert next(watch).status == NOT_SERVING
        for service in ("", "digits"):
            assert status_of(stack, service) == NOT_SERVING, service
    finally:
        watch.cancel()
        draining.cancel()  # the grace period; the fixture stops the gateway
