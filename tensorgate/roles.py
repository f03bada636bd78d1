"""One process, one role: a runtime worker or a gateway, run until SIGINT or SIGTERM.

Each announces readiness with one line on stdout, which is how a supervisor learns it is up.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from common import tracing
from common.gc_tuning import tune_collector
from common.memory import GATEWAY_TUNED, tune_allocator
from common.settings import GatewaySettings, RuntimeSettings
from gateway.edge import EdgeBuilder

if TYPE_CHECKING:
    from runtime.model import ModelStore

log = logging.getLogger("tensorgate")
RUNTIME_READY = "tensorgate-runtime ready"
GATEWAY_READY = "tensorgate-gateway ready"


def stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run_runtime(settings: RuntimeSettings, store: ModelStore | None = None) -> int:
    """Serve until SIGTERM, then drain; `store`: models loaded already (tests add their own)."""
    from runtime.app import Runtime, load_models

    if store is None:
        store = load_models(settings)
    tune_allocator()
    tracing.setup(settings.trace_exporter, "tensorgate-runtime")

    async def main() -> int:
        stop = stop_event()
        runtime = Runtime(settings, store)
        await runtime.start()
        tune_collector()
        print(f"{RUNTIME_READY} grpc={runtime.grpc_address} lane={runtime.lane_address}",
              flush=True)
        await stop.wait()
        log.info("runtime stopping")
        await runtime.drain()
        return 0

    return uvloop.run(main())


def edge_builder(settings: GatewaySettings) -> EdgeBuilder | None:
    """The gateway's edge-bundle builder: `tensorgate.edge` over the local repository."""
    repository = settings.model_repository
    if repository is None:
        return None
    cache = repository.resolve().parent / ".tensorgate-edge"

    def build(model: str, version: int, target: str) -> Path:
        # NOTE: imported on the first download, not at start: the exporters bring torch and
        # onnx (hundreds of MiB) into a gateway that otherwise never needs them.
        from tensorgate.edge.cache import bundle_for

        return bundle_for(repository, model, version, target, cache,
                          registry=settings.registry_path)

    return build


def run_gateway(settings: GatewaySettings) -> int:
    from gateway.app import Gateway

    tune_allocator(GATEWAY_TUNED)
    tracing.setup(settings.trace_exporter, "tensorgate-gateway")

    async def main() -> int:
        stop = stop_event()
        gateway = Gateway(settings, edge=edge_builder(settings))
        await gateway.start()
        gateway.start_metrics()
        tune_collector()
        print(f"{GATEWAY_READY} http={gateway.http_port} grpc={gateway.grpc_port}", flush=True)
        await stop.wait()
        log.info("gateway stopping")
        await gateway.drain()
        return 0

    return uvloop.run(main())
