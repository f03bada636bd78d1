"""The runtime's protocol-agnostic core: one table of RPCs, each a message in and a message out.

Both transports (OIP gRPC and the gateway's lane) decode with the table's request type, call the
handler, and encode its answer; a TensorgateError carries the failure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from common import EXTENSIONS, __version__
from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from runtime import describe
from runtime.model import ModelStore
from runtime.scheduler import Scheduler

Handler = Callable[[Any, float | None], Awaitable[Message]]


class RuntimeCore:
    def __init__(self, store: ModelStore, schedulers: dict[int, Scheduler]) -> None:
        self.store = store
        # Keyed by id(ServedModel): the hot path does one dict lookup after the store's.
        self.schedulers = schedulers
        self.ready = False
        self.methods: dict[str, tuple[type[Message], Handler]] = {
            "ModelInfer": (pb.ModelInferRequest, self.infer),
            "ServerLive": (pb.ServerLiveRequest, self.server_live),
            "ServerReady": (pb.ServerReadyRequest, self.server_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, self.server_metadata),
            "ModelReady": (pb.ModelReadyRequest, self.model_ready),
            "ModelMetadata": (pb.ModelMetadataRequest, self.model_metadata),
            "ModelConfig": (pb.ModelConfigRequest, self.model_config),
            "ModelStatistics": (pb.ModelStatisticsRequest, self.model_statistics),
            "RepositoryIndex": (pb.RepositoryIndexRequest, self.repository_index),
        }

    async def infer(self, request: Any, timeout: float | None) -> Message:
        model = self.store.get(request.model_name, request.model_version)
        return await self.schedulers[id(model)].infer(request, timeout)

    async def server_live(self, request: Any, timeout: float | None) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, timeout: float | None) -> Message:
        return pb.ServerReadyResponse(ready=self.ready)

    async def server_metadata(self, request: Any, timeout: float | None) -> Message:
        return pb.ServerMetadataResponse(name="tensorgate-runtime", version=__version__,
                                         extensions=EXTENSIONS)

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
        return describe.index(self.store, self.ready)
