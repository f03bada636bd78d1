"""Discovery: fixed addresses as given; DNS names re-resolved, added and drained by IP."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.settings import GatewaySettings
from gateway.discover import Discovery, Name, dns_name
from gateway.route import Router
from tests.unit.fake_upstreams import FakeUpstream, health
from tests.waiting import until_async


class Resolver:
    """Answers from a table that the test edits; an OSError in it is raised."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str] | OSError] = {}
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        answer = self.answers[host]
        if isinstance(answer, OSError):
            raise answer
        return answer


def discovery(*addresses: str) -> tuple[Discovery, Router, Resolver, dict[str, FakeUpstream]]:
    dialled: dict[str, FakeUpstream] = {}

    def dial(address: str) -> FakeUpstream:
        dialled[address] = FakeUpstream(address)
        return dialled[address]

    resolver = Resolver()
    router = Router(health())
    settings = GatewaySettings(runtime_endpoints=addresses, dns_refresh_s=0.01,
                               default_timeout_s=5.0)
    return Discovery(settings, router, dial, resolver), router, resolver, dialled


@pytest.mark.parametrize(("address", "name"), [
    ("workers.svc:8012", Name("", "workers.svc", 8012)),
    ("grpc://triton.ns.svc:8001", Name("grpc://", "triton.ns.svc", 8001)),
    ("10.1.2.3:8012", None),
    ("[::1]:8012", None),
    ("grpc://10.1.2.3:8001", None),
    ("unix:/tmp/lane.sock", None),
    ("localhost:8012", None),
])
def test_which_addresses_are_names(address: str, name: Name | None) -> None:
    assert dns_name(address) == name


def test_addresses_for_ips_bracket_ipv6_only_for_grpc() -> None:
    assert Name("", "w", 8012).address("fd00::5") == "fd00::5:8012"
    assert Name("grpc://", "w", 8001).address("fd00::5") == "grpc://[fd00::5]:8001"
    assert Name("", "w", 8012).address("10.0.0.5") == "10.0.0.5:8012"


async def test_fixed_addresses_join_at_once_and_resolve_nothing() -> None:
    found, router, resolver, _ = discovery("10.0.0.1:8012", "unix:/tmp/x.sock")
    assert router.addresses() == {"10.0.0.1:8012", "unix:/tmp/x.sock"}
    await found.start()
    assert resolver.asked == [] and found._task is None


async def test_new_ips_are_added_and_vanished_ones_drained_then_closed() -> None:
    found, router, resolver, dialled = discovery("workers.svc:8012", "10.9.9.9:8012")
    resolver.answers["workers.svc"] = ["10.0.0.1", "10.0.0.2"]
    await found.refresh()
    assert router.addresses() == {"10.9.9.9:8012", "10.0.0.1:8012", "10.0.0.2:8012"}
    assert resolver.asked == [("workers.svc", 8012)]
    leaving = dialled["10.0.0.1:8012"]
    leaving.outstanding = 1  # a call still in flight there
    resolver.answers["workers.svc"] = ["10.0.0.2", "10.0.0.3"]
    await found.refresh()
    assert router.addresses() == {"10.9.9.9:8012", "10.0.0.2:8012", "10.0.0.3:8012"}
    assert not leaving.closed
    leaving.outstanding = 0
    await asyncio.wait_for(asyncio.gather(*found._draining), 5)
    assert leaving.closed
    assert not dialled["10.0.0.2:8012"].closed
    assert len(router.health.endpoints) == 3


async def test_a_failed_lookup_keeps_the_workers_and_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    found, router, resolver, _ = discovery("workers.svc:8012")
    resolver.answers["workers.svc"] = ["10.0.0.1"]
    await found.refresh()
    resolver.answers["workers.svc"] = OSError("Name or service not known")
    with caplog.at_level(logging.WARNING, "tensorgate.gateway"):
        await found.refresh()
        await found.refresh()
    assert router.addresses() == {"10.0.0.1:8012"}
    assert [r.getMessage() for r in caplog.records] == [
        "cannot resolve runtime workers workers.svc: Name or service not known"]


async def test_the_background_task_re_resolves_until_stopped() -> None:
    found, router, resolver, dialled = discovery("workers.svc:8012")
    resolver.answers["workers.svc"] = ["10.0.0.1"]
    await found.start()
    assert router.addresses() == {"10.0.0.1:8012"}
    resolver.answers["workers.svc"] = ["10.0.0.2"]
    await until_async(lambda: router.addresses() == {"10.0.0.2:8012"}, "the new address used")
    await found.stop()
    assert dialled["10.0.0.1:8012"].closed
    await router.close()
    assert dialled["10.0.0.2:8012"].closed
