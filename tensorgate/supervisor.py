"""Process lifecycles: run one role until SIGINT/SIGTERM, or `serve` a runtime child + gateway."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop

from common.settings import GatewaySettings, RuntimeSettings

log = logging.getLogger("tensorgate")
READY = "tensorgate-runtime ready"


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    return uvloop.run(main())


def run_runtime(settings: RuntimeSettings) -> int:
    from runtime.app import Runtime, load_models

    store = load_models(settings)

    async def main() -> int:
        stop = _stop_event()
        runtime = Runtime(settings, store)
        await runtime.start()
        # The one line on stdout: how a supervisor learns that this worker is ready, and where.
        print(f"{READY} grpc={runtime.grpc_address} lane={runtime.lane_address}", flush=True)
        await stop.wait()
        log.info("runtime stopping")
        await runtime.stop()
        return 0

    return _run(main)


def run_gateway(settings: GatewaySettings) -> int:
    from gateway.app import Gateway

    async def main() -> int:
        stop = _stop_event()
        gateway = Gateway(settings)
        await gateway.start()
        gateway.start_metrics()
        await stop.wait()
        log.info("gateway stopping")
        await gateway.stop()
        return 0

    return _run(main)


def serve(repository: Path, threads: int,
          gateway_settings: Callable[[str], GatewaySettings]) -> int:
    """Start a runtime worker as a child on a unix socket, then the gateway in front of it."""
    with tempfile.TemporaryDirectory(prefix="tensorgate-") as tmp:
        endpoint = f"unix:{tmp}/lane.sock"
        command = [sys.executable, "-m", "tensorgate", "runtime", "--model-repository",
                   str(repository), "--listen", f"unix:{tmp}/grpc.sock", "--lane", endpoint,
                   "--threads", str(threads)]
        return _run(lambda: _serve(command, gateway_settings(endpoint)))


async def _serve(command: list[str], settings: GatewaySettings) -> int:
    from gateway.app import Gateway

    stop = _stop_event()
    child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    exited = asyncio.ensure_future(child.wait())
    if not await _wait_ready(child, stop):
        if not exited.done():
            child.terminate()
        code = await exited
        log.error("runtime worker exited with code %s before it was ready", code)
        return code or 1
    gateway = Gateway(settings)
    await gateway.start()
    gateway.start_metrics()
    log.info("tensorgate ready: HTTP :%d, gRPC :%d, metrics :%d", gateway.http_port,
             gateway.grpc_port, settings.metrics_port)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((stopping, exited), return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if exited.done():
        log.error("runtime worker exited unexpectedly with code %s", exited.result())
        code = 1
    log.info("tensorgate stopping")
    await gateway.stop()
    if not exited.done():
        child.terminate()
    await exited
    stopping.cancel()
    return code


async def _wait_ready(child: asyncio.subprocess.Process, stop: asyncio.Event) -> bool:
    """True once the runtime announces it is ready; False if it exits or we are told to stop."""
    assert child.stdout is not None
    announced = asyncio.ensure_future(_announcement(child.stdout))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((announced, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not announced.done():
        announced.cancel()
        return False
    return announced.result()


async def _announcement(stdout: asyncio.StreamReader) -> bool:
    async for line in stdout:
        if line.decode(errors="replace").startswith(READY):
            return True
    return False
