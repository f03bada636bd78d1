"""The process group of `serve` and `gateway --processes N`: start children, watch, stop them.

Children announce readiness on stdout (see roles.py). Gateways share their ports through
SO_REUSEPORT; their metrics meet in a prometheus multiprocess directory served from here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import uvloop
from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from common.settings import GatewaySettings
from tensorgate.roles import GATEWAY_READY, RUNTIME_READY, stop_event

log = logging.getLogger("tensorgate")


@dataclass
class Child:
    name: str
    argv: list[str]
    ready: str
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None


def gateway_argv(settings: GatewaySettings) -> list[str]:
    argv = [sys.executable, "-m", "tensorgate", "gateway", "--host", settings.host,
            "--http-port", str(settings.http_port), "--grpc-port", str(settings.grpc_port),
            "--metrics-port", "-1", "--reuse-port"]
    for endpoint in settings.runtime_endpoints:
        argv += ["--runtime", endpoint]
    return argv


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT, so port 0 becomes one port every child can share."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve(repository: Path, threads: int, processes: int, settings: GatewaySettings) -> int:
    """A runtime worker on a unix socket and `processes` gateways in front of it."""
    with tempfile.TemporaryDirectory(prefix="tensorgate-") as tmp:
        lane = f"unix:{tmp}/lane.sock"
        runtime = Child("runtime", [sys.executable, "-m", "tensorgate", "runtime",
                                    "--model-repository", str(repository), "--listen",
                                    f"unix:{tmp}/grpc.sock", "--lane", lane, "--threads",
                                    str(threads)], RUNTIME_READY)
        return run_group([runtime], replace(settings, runtime_endpoints=(lane,)), processes,
                         Path(tmp))


def gateways(settings: GatewaySettings, processes: int) -> int:
    with tempfile.TemporaryDirectory(prefix="tensorgate-") as tmp:
        return run_group([], settings, processes, Path(tmp))


def run_group(first: list[Child], settings: GatewaySettings, processes: int, tmp: Path) -> int:
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    sockets = [reserve_port(settings.host, settings.http_port),
               reserve_port(settings.host, settings.grpc_port)]
    settings = replace(settings, http_port=sockets[0].getsockname()[1],
                       grpc_port=sockets[1].getsockname()[1])
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    children = first + [Child(f"gateway-{i}", gateway_argv(settings), GATEWAY_READY, env)
                        for i in range(processes)]
    try:
        return uvloop.run(_supervise(children, settings, metrics_dir))
    finally:
        for sock in sockets:
            sock.close()


async def _supervise(children: list[Child], settings: GatewaySettings, metrics: Path) -> int:
    stop = stop_event()
    try:
        for child in children:
            if not await _start(child, stop):
                return 1 if not stop.is_set() else 0
        _serve_metrics(settings, metrics)
        log.info("tensorgate ready: HTTP :%d, gRPC :%d, metrics :%d (%d gateway processes)",
                 settings.http_port, settings.grpc_port, settings.metrics_port,
                 sum(c.ready == GATEWAY_READY for c in children))
        exits = [asyncio.ensure_future(c.process.wait()) for c in children if c.process]
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
        if stopping not in done:
            log.error("a child process exited unexpectedly; stopping the others")
            return 1
        return 0
    finally:
        log.info("tensorgate stopping")
        await _stop_all(children)


async def _start(child: Child, stop: asyncio.Event) -> bool:
    """Start one child and wait for its ready line; False if it exits or we must stop first."""
    child.process = await asyncio.create_subprocess_exec(
        *child.argv, stdout=asyncio.subprocess.PIPE, env={**os.environ, **child.env})
    announced = asyncio.ensure_future(_announcement(child.process.stdout, child.ready))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((announced, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if announced.done() and announced.result():
        return True
    announced.cancel()
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
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics))
    start_http_server(settings.metrics_port, settings.host, registry=registry)
