"""The request context: each stage of `Pipeline.infer` fills in what it decided."""

from __future__ import annotations

from types import MappingProxyType

import grpc
import pytest
from prometheus_client import CollectorRegistry

from common.errors import TensorgateError, unavailable
from common.policy import ANONYMOUS, Principal, Snapshot, TrafficPolicy
from common.settings import AuthSettings, GatewaySettings
from gateway.context import RequestContext
from gateway.health import Health
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.quota import Quotas
from gateway.route import Router
from tests.unit.fake_upstreams import FakeUpstream

SPLIT = TrafficPolicy("ab", (("1", 1), ("2", 1)), sticky="header:x-user")
SNAPSHOT = Snapshot(traffic=MappingProxyType({"ab": SPLIT}),
                    production=MappingProxyType({"prod": "3"}))


def pipeline(auth: bool = False, workers: int = 1) -> tuple[Pipeline, list[FakeUpstream]]:
    settings = GatewaySettings(auth=AuthSettings(enabled=auth), default_timeout_s=7.0)
    metrics = GatewayMetrics(CollectorRegistry())
    router = Router(Health(settings, metrics))
    upstreams = [FakeUpstream(f"10.0.0.{i}:8012") for i in range(workers)]
    for upstream in upstreams:
        router.add(upstream)  # type: ignore[arg-type]
    return Pipeline(settings, router, metrics, lambda: SNAPSHOT, Quotas(None)), upstreams


async def test_each_stage_fills_in_what_it_decided() -> None:
    stages, [upstream] = pipeline()
    call = RequestContext("prod", "", "grpc", {})
    assert await stages.infer(call, b"") == b"ok"
    assert call.principal is ANONYMOUS
    assert call.policy is None and call.routed == "3"  # the production alias's version
    assert call.version == ""  # what the caller asked for stays as it asked
    assert call.endpoint == upstream.address
    assert call.id  # one was given: the caller sent none
    assert call.code == grpc.StatusCode.OK and call.elapsed > 0
    assert upstream.calls == [("ModelInfer", 7.0)]  # no deadline given: the default


async def test_the_split_routes_a_subject_to_one_version_and_an_asked_one_wins() -> None:
    stages, _ = pipeline()
    routed = set()
    for _ in range(5):
        call = RequestContext("ab", "", "http", {"x-user": "alice"})
        await stages.infer(call, b"")
        assert call.policy is SPLIT
        routed.add(call.routed)
    assert len(routed) == 1 and routed <= {"1", "2"}
    asked = RequestContext("ab", "2", "http", {"x-user": "alice"})
    await stages.infer(asked, b"")
    assert asked.routed == "2"


async def test_a_refused_caller_is_never_read_nor_routed() -> None:
    stages, [upstream] = pipeline(auth=True)
    loaded = []

    async def load(call: RequestContext) -> bytes:
        loaded.append(call)
        return b""

    call = RequestContext("prod", "", "http", {})
    with pytest.raises(TensorgateError):
        await stages.infer(call, load)
    assert loaded == [] and upstream.calls == []
    assert call.principal is None and call.routed is None and call.endpoint == ""
    assert call.code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_caller_authenticated_on_its_metadata_is_only_authorized_for_the_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stages, [upstream] = pipeline(auth=True)
    asked: list[str | None] = []
    monkeypatch.setattr(stages.auth, "authenticate", asked.append)
    alice = Principal("key:alice", models=("prod",))
    call = RequestContext("prod", "", "grpc", {}, authenticated=alice)
    assert await stages.infer(call, b"") == b"ok"
    assert call.principal is alice and asked == []  # no second authentication
    other = RequestContext("ab", "", "grpc", {}, authenticated=alice)
    with pytest.raises(TensorgateError) as refused:
        await stages.infer(other, b"")
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "may not use model 'ab'" in refused.value.message
    assert other.principal is None and asked == [] and len(upstream.calls) == 1
    failures = stages.metrics.auth_failures.labels("PERMISSION_DENIED")._value.get()
    assert failures == 1


async def test_the_loader_fills_in_the_id_and_deadline_the_body_carries() -> None:
    stages, [upstream] = pipeline()

    async def load(call: RequestContext) -> bytes:
        assert call.principal is ANONYMOUS  # admitted before its body is read
        call.id, call.timeout_s = "given", 2.5
        return b""

    call = RequestContext("prod", "", "http", {})
    await stages.infer(call, load)
    assert call.id == "given" and upstream.calls == [("ModelInfer", 2.5)]


async def test_a_retry_moves_the_endpoint_to_the_worker_that_answered() -> None:
    stages, upstreams = pipeline(workers=2)
    upstreams[0].error = unavailable("gone")
    for _ in range(4):  # whichever balance picks first, the answer comes from the other
        call = RequestContext("prod", "1", "grpc", {})
        assert await stages.infer(call, b"") == b"ok"
        assert call.endpoint == upstreams[1].address
