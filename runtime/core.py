"""The runtime's protocol-agnostic core: one table of RPCs, each a message in and a message out.

Both transports (OIP gRPC and the gateway's lane) decode with the table's request type, call the
handler, and encode its answer; a TensorgateError carries the failure.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry.trace import Tracer

from common import RUNTIME_EXTENSIONS, __version__, tracing
from common.errors import TensorgateError
from common.names import check_name
from common.proto import grpc_service_pb2 as pb
from runtime import describe
from runtime.batcher import Timing
from runtime.decode import InferCall, decode_infer
from runtime.device_rows import Hold
from runtime.executor import Output
from runtime.model import ModelStore
from runtime.reload import Reloader
from runtime.scheduler import Scheduler, Ticket
from runtime.shm import Regions
from runtime.shm_api import shared_memory_methods
from runtime.shm_infer import Lease
from runtime.staging import Upload

Handler = Callable[[Any, float | None], Awaitable[Message]]
#: Request bytes to the handler's argument: a message's FromString, or decode_infer.
Decoder = Callable[[Any], Any]


class RuntimeCore:
    def __init__(self, store: ModelStore, schedulers: dict[int, Scheduler],
                 reloader: Reloader | None = None, regions: Regions | None = None) -> None:
        self.store = store
        #: Triton's system shared memory: the regions this worker maps.
        self.regions = regions or Regions()
        self.reloader = reloader
        # Keyed by id(ServedModel): the hot path does one dict lookup after the store's.
        self.schedulers = schedulers
        self.ready = False
        self.methods: dict[str, tuple[Decoder, Handler]] = {
            "ModelInfer": (decode_infer, self.infer),
            "ServerLive": (pb.ServerLiveRequest.FromString, self.server_live),
            "ServerReady": (pb.ServerReadyRequest.FromString, self.server_ready),
            "ServerMetadata": (pb.ServerMetadataRequest.FromString, self.server_metadata),
            "ModelReady": (pb.ModelReadyRequest.FromString, self.model_ready),
            "ModelMetadata": (pb.ModelMetadataRequest.FromString, self.model_metadata),
            "ModelConfig": (pb.ModelConfigRequest.FromString, self.model_config),
            "ModelStatistics": (pb.ModelStatisticsRequest.FromString, self.model_statistics),
            "RepositoryIndex": (pb.RepositoryIndexRequest.FromString, self.repository_index),
            "RepositoryModelLoad": (pb.RepositoryModelLoadRequest.FromString,
                                    self.repository_load),
            "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest.FromString,
                                      self.repository_unload),
            **shared_memory_methods(self.regions),
        }

    async def infer(self, call: InferCall, timeout: float | None) -> Message:
        if call.shm:
            return await self._infer_shared(call, timeout)
        request = call.message
        model = self.store.get(request.model_name, request.model_version)
        scheduler = self.schedulers[id(model)]
        # NOTE: counted here, so a version being retired knows when its last request has left.
        model.in_flight += 1
        try:
            tracer = tracing.tracer()
            if tracer is not None and tracing.TRACEPARENT in request.parameters:
                return await self._traced(tracer, scheduler, call, timeout)
            return await scheduler.infer(call, timeout)
        finally:
            model.in_flight -= 1
            if not model.in_flight and model.drained is not None:
                model.drained.set()

    def submit(self, call: InferCall, timeout: float | None) -> Ticket | None:
        """Queue a plain request without a task of its own (the lane's fast path): its ticket,
        whose future is a Promise, for `settle` once it is done; None for one that needs `infer`
        (shared-memory regions, tracing). Raises TensorgateError for a request refused before
        queueing."""
        if call.shm:
            return None
        request = call.message
        model = self.store.get(request.model_name, request.model_version)
        tracer = tracing.tracer()
        if tracer is not None and tracing.TRACEPARENT in request.parameters:
            return None
        ticket = self.schedulers[id(model)].enqueue(call, timeout, direct=True)
        model.in_flight += 1
        return ticket

    def settle(self, ticket: Ticket) -> list[Output]:
        """A submitted request's outputs once its future is done; raises its failure."""
        model = ticket.scheduler.model
        try:
            return ticket.scheduler.outputs(ticket)
        finally:
            model.in_flight -= 1
            if not model.in_flight and model.drained is not None:
                model.drained.set()

    async def _infer_shared(self, call: InferCall, timeout: float | None) -> Message:
        """A request naming shared-memory regions: inputs read from them in place, outputs
        written into them; the regions stay in use until the answer is built."""
        lease = Lease(self.regions, call)
        hold: Hold | None = None
        try:
            if lease.device_inputs:
                request = call.message
                model = self.store.get(request.model_name, request.model_version)
                await lease.fetch(all(getattr(b, "gathers_on_device", False)
                                      for b in model.backends))
            if lease.call.device:
                # NOTE: its batch reads and writes the regions where they lie, on the GPU: a
                # caller that goes first (cancelled) leaves them held until that batch is done.
                hold = lease.call.hold = Hold()
            answer = await self.infer(lease.call, timeout)
            await lease.write(answer)
            return answer
        finally:
            if hold is not None and hold.running:
                hold.after = lease.release
            else:
                lease.release()

    async def _traced(self, tracer: Tracer, scheduler: Scheduler, call: InferCall,
                      timeout: float | None) -> Message:
        timing = Timing(0.0)
        failed = True
        try:
            answer = await scheduler.infer(call, timeout, timing)
            failed = False
            return answer
        finally:
            marks = [timing.arrival or time.monotonic(), timing.launched, timing.done][
                :3 if timing.done else 2 if timing.launched else 1]
            tracing.record_runtime(
                tracer, call.message.parameters[tracing.TRACEPARENT].string_param,
                scheduler.model.name, str(scheduler.model.version), marks,
                (timing.rows, timing.input_ns, timing.infer_ns) if timing.done else None, failed)

    async def server_live(self, request: Any, timeout: float | None) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, timeout: float | None) -> Message:
        return pb.ServerReadyResponse(ready=self.ready)

    async def server_metadata(self, request: Any, timeout: float | None) -> Message:
        cuda = ("cuda_shared_memory",) if self.regions.cuda.available() else ()
        return pb.ServerMetadataResponse(name="tensorgate-runtime", version=__version__,
                                         extensions=(*RUNTIME_EXTENSIONS, *cuda))

    async def model_ready(self, request: Any, timeout: float | None) -> Message:
        try:
            self.store.get(request.name, request.version)
        except TensorgateError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    async def model_metadata(self, request: Any, timeout: float | None) -> Message:
        return describe.metadata(self.store, request.name, request.version)

    async def model_config(self, request: Any, timeout: float | None) -> Message:
        model = self.store.get(request.name, request.version)
        return pb.ModelConfigResponse(config=describe.model_config(model))

    async def model_statistics(self, request: Any, timeout: float | None) -> Message:
        return describe.statistics(self.store, request.name, request.version)

    async def repository_index(self, request: Any, timeout: float | None) -> Message:
        repository = self.reloader.repository if self.reloader is not None else None
        return describe.index(self.store, repository, self.ready, request.ready)

    async def repository_load(self, request: Any, timeout: float | None) -> Message:
        """Load or reload a model from its folder, with the files and config sent along."""
        name = check_name(request.model_name)
        reloader = self._reloader()
        params = request.parameters
        files = {key[5:]: value.bytes_param for key, value in params.items()
                 if key.startswith("file:")}
        config = params["config"].string_param if "config" in params else None
        upload = Upload(files, config) if files or config is not None else None
        await reloader.load(name, upload)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(self, request: Any, timeout: float | None) -> Message:
        await self._reloader().unload(check_name(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    def _reloader(self) -> Reloader:
        if self.reloader is None:
            raise TensorgateError(grpc.StatusCode.UNAVAILABLE,
                                  "this runtime cannot load or unload models")
        return self.reloader

