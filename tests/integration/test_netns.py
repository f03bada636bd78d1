"""Several hosts, really: a gateway and two runtime workers, each in its own network namespace,
over TCP lanes with mutual TLS, found by one name the gateway re-resolves; links cut under load."""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtest import faults
from tests import waiting
from tests.integration import netns

# NOTE: a ceiling for a loaded machine; the module takes about 25 s on an idle one.
pytestmark = pytest.mark.timeout(300)
ROLES = "tests.integration.netns_roles"
# NOTE: fixed ports are safe here: each namespace has a network stack of its own.
LANE_PORT, GRPC_PORT, METRICS_PORT = 8012, 8011, 8002
CEILING_S = 60.0  # a bound on waits that would otherwise never end, not an expectation
CALLERS = 4
RESULT = re.compile(r"^result (\d+) ([\d.]+) (.*)")


@dataclass
class Cluster:
    hosts: netns.Hosts
    gateway: faults.Process
    http_port: int
    grpc_port: int

    def lane(self, i: int) -> str:
        return f"{self.hosts.worker_ip(i)}:{LANE_PORT}"

    def seen_after(self, what: str, i: int, since: float) -> bool:
        return any(t > since for t, _ in self.gateway.matches(self._about(what, i)))

    def admitted(self, i: int) -> bool:
        """No ejection of worker i, or a re-admission after the last one."""
        ejected = [t for t, _ in self.gateway.matches(self._about("ejected", i))]
        return not ejected or self.seen_after("re-admitted", i, max(ejected))

    def _about(self, what: str, i: int) -> re.Pattern:
        return re.compile(rf"runtime worker {re.escape(self.lane(i))} {what}")

    def in_namespace(self, ns: str, role: str, *args: str) -> list[str]:
        return self.hosts.exec(ns, sys.executable, "-m", ROLES, role, *args)

    def answered_by(self, i: int) -> int:
        """Requests for digits worker i has answered, from its /metrics."""
        child = faults.Process(self.in_namespace(self.hosts.workers[i], "count",
                                                 "--metrics-port", str(METRICS_PORT)))
        assert child.popen.wait(CEILING_S) == 0, child.output()
        return int(child.wait_for(re.compile(r"^\d+$")).group(0))


def until(check: Callable[[], bool], what: str, *shown: faults.Process,
          ceiling: float = CEILING_S) -> None:
    """waiting.until, showing the tails of the `shown` processes' output if it fails."""
    waiting.until(check, what, ceiling, every_s=0.05,
                  on_timeout=lambda: "\n".join(p.output()[-3000:] for p in shown))


def callers_answered(process: faults.Process, since: float) -> set[str]:
    return {line.split()[1] for t, line in list(process.lines)
            if t > since and line.startswith("ok")}


def outcomes(process: faults.Process, word: str) -> list[str]:
    return [line for _, line in list(process.lines) if line.startswith(word)]


def _start(hosts: netns.Hosts, tmp: Path, processes: list[faults.Process]) -> Cluster:
    pki = netns.make_pki(tmp, [hosts.worker_ip(i) for i in range(len(hosts.workers))])
    roles = [sys.executable, "-m", ROLES, "worker"]
    for i, ns in enumerate(hosts.workers):
        processes.append(faults.Process(hosts.exec(
            ns, *roles, "--lane", f"{hosts.worker_ip(i)}:{LANE_PORT}", "--listen",
            f"127.0.0.1:{GRPC_PORT}", "--metrics-port", str(METRICS_PORT), "--cert",
            str(pki.server[0]), "--key", str(pki.server[1]), "--ca", str(pki.ca))))
    for worker in processes:
        worker.wait_for(faults.RUNTIME_READY)
    gateway = faults.Process(hosts.exec(hosts.gateway, *faults.tensorgate(
        "gateway", "--runtime", f"{netns.WORKERS_NAME}:{LANE_PORT}", "--host", "127.0.0.1",
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "-1", "--no-auth",
        "--registry", str(tmp / "registry.db"), "--runtime-tls-ca", str(pki.ca),
        "--runtime-tls-cert", str(pki.client[0]), "--runtime-tls-key", str(pki.client[1]))))
    processes.append(gateway)
    ready = gateway.wait_for(faults.GATEWAY_READY)
    cluster = Cluster(hosts, gateway, int(ready.group(1)), int(ready.group(2)))
    for i in range(len(hosts.workers)):
        until(functools.partial(cluster.seen_after, r"added \(from workers\.tg\)", i, 0.0),
              f"worker {i} found by name")
    return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = netns.refused()
    if why is not None:
        pytest.skip(f"network namespaces: {why}")
    hosts = netns.Hosts(2)
    processes: list[faults.Process] = []
    try:
        try:
            hosts.create()
        except OSError as exc:
            if hosts.made:
                raise
            pytest.skip(f"network namespaces: `ip netns add` refused: {exc}")
        yield _start(hosts, tmp_path_factory.mktemp("netns"), processes)
    finally:
        for process in reversed(processes):
            process.stop(30)
        hosts.close()


def start_load(cluster: Cluster) -> faults.Process:
    """Paced callers in the gateway's namespace, bounded in count and time, until stop_load."""
    return faults.Process(cluster.in_namespace(
        cluster.hosts.gateway, "load", "--port", str(cluster.grpc_port), "--callers",
        str(CALLERS), "--count", "20000", "--seconds", "150", "--timeout", "30"), stdin=True)


def stop_load(load: faults.Process) -> None:
    assert load.popen.stdin is not None
    load.popen.stdin.close()
    try:
        load.wait_for(re.compile(r"^done"), CEILING_S)
    finally:
        load.stop()


def test_netns_a_worker_cut_off_under_load_costs_no_request_and_is_readmitted(
        cluster: Cluster) -> None:
    load = start_load(cluster)
    try:
        until(lambda: len(outcomes(load, "ok")) >= 50, "50 answers before the cut")
        cut = time.monotonic()
        cluster.hosts.set_link(0, up=False)
        until(lambda: cluster.seen_after("ejected", 0, cut), "worker 0 ejected")
        ejected = time.monotonic()
        # Every caller answered since: none is left hanging on the worker cut off.
        until(lambda: len(callers_answered(load, ejected)) == CALLERS,
              "every caller answered while worker 0 is cut off", load, cluster.gateway)
        healed = time.monotonic()
        cluster.hosts.set_link(0, up=True)
        until(lambda: cluster.seen_after("re-admitted", 0, healed), "worker 0 re-admitted")
        before = cluster.answered_by(0)
        # More than the callers, so calls stuck at the cut and delivered late do not count.
        until(lambda: cluster.answered_by(0) >= before + 20, "traffic reaching worker 0 again")
    finally:
        stop_load(load)
    assert outcomes(load, "fail") == []


def test_netns_a_worker_gone_from_the_name_is_drained_and_added_back_without_a_failure(
        cluster: Cluster) -> None:
    load = start_load(cluster)
    try:
        until(lambda: len(outcomes(load, "ok")) >= 50, "50 answers before the change")
        dropped = time.monotonic()
        cluster.hosts.name([0])
        until(lambda: cluster.seen_after("removed", 1, dropped), "worker 1 removed")
        restored = time.monotonic()
        cluster.hosts.name(range(len(cluster.hosts.workers)))
        until(lambda: cluster.seen_after("added", 1, restored), "worker 1 added back")
        before = cluster.answered_by(1)
        until(lambda: cluster.answered_by(1) >= before + 20, "traffic reaching worker 1 again")
    finally:
        cluster.hosts.name(range(len(cluster.hosts.workers)))
        stop_load(load)
    assert outcomes(load, "fail") == []


def test_netns_a_partition_with_a_call_in_flight_ends_in_deadline_exceeded(
        cluster: Cluster) -> None:
    deadline = 3.0
    slow = faults.Process(cluster.in_namespace(
        cluster.hosts.gateway, "slow", "--port", str(cluster.http_port), "--deadline",
        str(deadline), "--ceiling", "90"))
    slow.wait_for(re.compile(r"^sending"))
    try:
        for i in range(len(cluster.hosts.workers)):
            cluster.hosts.set_link(i, up=False)
        result = slow.wait_for(RESULT, 120)
    finally:
        for i in range(len(cluster.hosts.workers)):
            cluster.hosts.set_link(i, up=True)
        slow.stop()
    status, took, text = int(result.group(1)), float(result.group(2)), result.group(3)
    assert status == 504 and "did not answer within" in text, (status, text)
    # The deadline is honoured: the gateway answers by itself, not at the client's ceiling.
    assert took < deadline + 30, took
    for i in range(len(cluster.hosts.workers)):
        until(functools.partial(cluster.admitted, i), f"worker {i} back")
