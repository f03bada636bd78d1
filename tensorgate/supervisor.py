"""The process group of `serve` and `gateway --processes N`: start children, watch, stop them.

Children announce readiness on stdout (see roles.py). Gateways share the ports this process
claimed (ports.py) through SO_REUSEPORT; their metrics meet in a multiprocess directory served here.
A runtime worker that dies is restarted with back-off; a gateway that dies stops the group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import uvloop

from common.model_config import ConfigError
from common.settings import GatewaySettings, to_json
from runtime import metrics_http
from runtime.metrics import serving_registry
from tensorgate import mps, ports
from tensorgate.bootstrap import write_private
from tensorgate.ports import Claim
from tensorgate.roles import GATEWAY_READY, RUNTIME_READY, stop_event

log = logging.getLogger("tensorgate")

#: Restart back-off: the first wait, the longest, and the time up after which it starts over.
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 10.0
STABLE_AFTER_S = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    ready: str
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    #: Restarted when it dies (runtime workers) instead of stopping the group.
    restart: bool = False
    #: What it takes from an MPS daemon (mps.py), over `env`.
    clients: mps.Clients = field(default_factory=mps.Clients)


def gateway_argv(settings: GatewaySettings, tmp: Path) -> list[str]:
    """The command of a gateway child: its settings travel in an owner-only file, not argv,
    where a JWT secret would show in `ps`."""
    path = tmp / "gateway-settings.json"
    write_private(path, to_json(settings))
    return [sys.executable, "-m", "tensorgate", "gateway", "--settings-file", str(path)]


def serve(repository: Path, threads: int, processes: int, settings: GatewaySettings,
          runtime_workers: int = 1, held: Claim | None = None,
          sharing: mps.Plan | None = None) -> int:
    """`runtime_workers` runtime workers on unix sockets, sharing `threads` (and the GPUs
    through CUDA MPS as `sharing` plans), and `processes` gateways in front of them all, on the
    ports of `held` (claimed here if None)."""
    with tempfile.TemporaryDirectory(prefix="tensorgate-") as tmp, \
            held or ports.claim(settings, reserve=True) as claimed, \
            mps.daemon(sharing or mps.Plan(), Path(tmp) / "mps") as clients:
        runtimes = [runtime_child(repository, Path(tmp), i, share, settings, clients)
                    for i, share in enumerate(split_threads(threads, runtime_workers))]
        lanes = tuple(f"unix:{tmp}/lane-{i}.sock" for i in range(len(runtimes)))
        return run_group(runtimes, replace(claimed.settings, runtime_endpoints=lanes), processes,
                         Path(tmp))


def split_threads(threads: int, workers: int) -> list[int]:
    """`threads` shared out as evenly as they go, at least one each."""
    workers = max(1, workers)
    return [max(1, threads // workers + (i < threads % workers)) for i in range(workers)]


def runtime_child(repository: Path, tmp: Path, index: int, threads: int,
                  settings: GatewaySettings | None = None,
                  clients: mps.Clients | None = None) -> Child:
    """A runtime worker of `serve`: the gateways' registry, drain timeout and tracing, and the
    MPS daemon's environment."""
    settings = settings or GatewaySettings()
    argv = [sys.executable, "-m", "tensorgate", "runtime", "--model-repository",
            str(repository), "--listen", f"unix:{tmp}/grpc-{index}.sock",
            "--lane", f"unix:{tmp}/lane-{index}.sock", "--threads", str(threads),
            "--drain-timeout", str(settings.drain_timeout_s)]
    if settings.registry_path is not None:
        argv += ["--registry", str(settings.registry_path)]
    if settings.trace_exporter is not None:
        argv += ["--trace-exporter", settings.trace_exporter]
    if not settings.triton_metrics:
        argv.append("--no-triton-metrics")
    # NOTE: the workers write their metrics where the gateways do (run_group's directory), so
    # the supervisor's one /metrics shows both.
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")}
    return Child(f"runtime-{index}", argv, RUNTIME_READY, env, restart=True,
                 clients=clients or mps.Clients())


def restart_delay(previous: float | None, uptime: float) -> float:
    """The wait before the next restart: 0.5 s, doubling up to 10 s while the child keeps dying
    quickly; back to 0.5 s once it has stayed up 30 s."""
    if previous is None or uptime >= STABLE_AFTER_S:
        return RESTART_FIRST_S
    return min(previous * 2, RESTART_MAX_S)


def gateways(settings: GatewaySettings, processes: int, held: Claim | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="tensorgate-") as tmp, \
            held or ports.claim(settings, reserve=True) as claimed:
        return run_group([], claimed.settings, processes, Path(tmp))


def run_group(first: list[Child], settings: GatewaySettings, processes: int, tmp: Path) -> int:
    """Run the children on `settings`' ports, which this process has claimed and bound."""
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    # NOTE: one quota table for all the gateways, so a key's limits hold on the host as a whole.
    child_settings = replace(settings, metrics_port=-1, reuse_port=True,
                             quota_path=settings.quota_path or tmp / "quotas")
    argv = gateway_argv(child_settings, tmp)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    children = first + [Child(f"gateway-{i}", argv, GATEWAY_READY, env)
                        for i in range(processes)]
    return uvloop.run(_supervise(children, settings, metrics_dir))


async def _supervise(children: list[Child], settings: GatewaySettings, metrics: Path) -> int:
    stop = stop_event()
    keepers: list[asyncio.Task] = []
    try:
        # NOTE: runtime workers load their models side by side; gateways start after them.
        first = [c for c in children if c.restart]
        if not all(await asyncio.gather(*(_start(c, stop) for c in first))):
            return 1 if not stop.is_set() else 0
        for child in children:
            if not child.restart and not await _start(child, stop):
                return 1 if not stop.is_set() else 0
        _serve_metrics(settings, metrics)
        log.info("tensorgate ready: HTTP :%d, gRPC :%d, metrics :%d (%d gateway processes)",
                 settings.http_port, settings.grpc_port, settings.metrics_port,
                 sum(c.ready == GATEWAY_READY for c in children))
        keepers = [asyncio.ensure_future(_keep_alive(c, stop)) for c in first]
        exits = [asyncio.ensure_future(c.process.wait())
                 for c in children if c.process and not c.restart]
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
        if stopping not in done:
            log.error("a child process exited unexpectedly; stopping the others")
            return 1
        return 0
    finally:
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        log.info("tensorgate stopping")
        # NOTE: each child drains for up to its timeout after a grace period; a little more
        # before it is killed.
        await _stop_all(children, settings.drain_grace_s + settings.drain_timeout_s + 5.0)


async def _keep_alive(child: Child, stop: asyncio.Event) -> None:
    """Restart the child each time it dies, waiting longer after each quick death."""
    delay: float | None = None
    started = time.monotonic()
    while not stop.is_set():
        assert child.process is not None
        pid = child.process.pid
        code = await child.process.wait()
        delay = restart_delay(delay, time.monotonic() - started)
        log.warning("%s (pid %d) exited with code %s; restarting it in %.1fs", child.name, pid,
                    code, delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return
        except TimeoutError:
            pass
        started = time.monotonic()
        if await _start(child, stop):
            log.warning("%s restarted (pid %d)", child.name, child.process.pid)


async def _start(child: Child, stop: asyncio.Event) -> bool:
    """Start one child and wait for its ready line; False if it exits or we must stop first."""
    child.process = await asyncio.create_subprocess_exec(
        *child.argv, stdout=asyncio.subprocess.PIPE,
        env=child.clients.environ({**os.environ, **child.env}))
    log.info("%s started (pid %d)", child.name, child.process.pid)
    announced = asyncio.ensure_future(_announcement(child.process.stdout, child.ready))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((announced, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not announced.done():
            announced.cancel()
    if announced.done() and announced.result():
        return True
    code = await child.process.wait() if not stop.is_set() else None
    if code is not None:
        log.error("%s exited with code %s before it was ready", child.name, code)
    return False


async def _announcement(stdout: asyncio.StreamReader | None, ready: str) -> bool:
    assert stdout is not None
    async for line in stdout:
        if line.decode(errors="replace").startswith(ready):
            return True
    return False


async def _stop_all(children: list[Child], grace: float = 15.0) -> None:
    """Gateways first (they drain into the runtime), then the rest."""
    for group in ([c for c in children if c.ready == GATEWAY_READY],
                  [c for c in children if c.ready != GATEWAY_READY]):
        running = [c.process for c in group if c.process and c.process.returncode is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                process.kill()
                await process.wait()


def _serve_metrics(settings: GatewaySettings, metrics: Path) -> None:
    if settings.metrics_port < 0:
        return
    # NOTE: also drops the live gauges of dead runtime workers, and adds the GPUs via NVML.
    registry = serving_registry(str(metrics), triton=settings.triton_metrics)
    try:
        metrics_http.start(settings.metrics_port, settings.host, registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {settings.metrics_port} on {settings.host}: "
                          f"{exc.strerror} (choose another port, or -1 for none)") from None
