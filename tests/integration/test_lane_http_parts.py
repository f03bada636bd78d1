"""HTTP infer with tensors kept apart (gateway/request_parts.py): a gateway on a unix lane, whose
tensors go through its arena, answers byte for byte what a gateway forwarding whole messages by
value answers, for binary and JSON tensors, BYTES, classification and outputs in a region."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as thttp
from prometheus_client import CollectorRegistry

from common.model_config import DynamicBatching, ModelConfig, TensorSpec
from common.settings import AuthSettings, GatewaySettings, RuntimeSettings
from gateway.app import Gateway
from loadtest.sleepy import store_with
from runtime.app import Runtime
from runtime.backends.base import Backend
from runtime.model import ServedModel
from tests.integration.lane_models import WIDTH, echo_model
from tests.integration.shm_client import shm

ROOT = Path(__file__).resolve().parents[2]


def text_model() -> ServedModel:
    """`text`: answers its BYTES input as it came."""
    spec = TensorSpec("INPUT0", "BYTES", (-1,))
    out = TensorSpec("OUTPUT0", "BYTES", (-1,))
    gate = threading.Event()
    gate.set()
    backend = echo_model(gate)[1]
    backend.inputs, backend.outputs = (spec,), (out,)
    config = ModelConfig(name="text", source=Path("<text>"), max_batch_size=8,
                         dynamic_batching=DynamicBatching(max_queue_size=64),
                         instance_count=1, device="cpu", inputs=(spec,), outputs=(out,))
    backends: list[Backend] = [backend]
    return ServedModel(config, 1, backends, warmup_ns=float("inf"))


class Pair:
    """One runtime; gateway 0 on its unix lane (an arena), gateway 1 on its gRPC (by value)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def start(self) -> None:
        settings = RuntimeSettings(model_repository=ROOT / "models", listen="127.0.0.1:0",
                                   lane=f"unix:{self.folder}/lane.sock", threads=1)
        gate = threading.Event()
        gate.set()
        self.runtime = Runtime(settings, store_with(settings, echo_model(gate)[0], text_model()))
        await self.runtime.start()
        self.registry = CollectorRegistry()
        upstreams = (self.runtime.lane_address, f"grpc://{self.runtime.grpc_address}")
        self.gateways = [Gateway(GatewaySettings(
            host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=-1,
            runtime_endpoints=(upstream,), auth=AuthSettings(enabled=False)),
            registry=registry) for upstream, registry in zip(upstreams, (self.registry, None))]
        for gateway in self.gateways:
            await gateway.start()

    def call(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(120)  # type: ignore[arg-type]

    def url(self, which: int, model: str) -> str:
        return f"http://127.0.0.1:{self.gateways[which].http_port}/v2/models/{model}/infer"

    def slots(self) -> float:
        return self.registry.get_sample_value("tensorgate_lane_arena_slots") or 0.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    running = Pair(tmp_path_factory.mktemp("parts"))
    running.thread.start()
    running.call(running.start())
    yield running
    for gateway in running.gateways:
        running.call(gateway.stop(grace=1.0))
    running.call(running.runtime.stop(grace=1.0))
    running.loop.call_soon_threadsafe(running.loop.stop)
    running.thread.join(30)


def both(pair: Pair, model: str, body: bytes, header_length: int | None = None
         ) -> requests.Response:
    """The answer of the arena's gateway, checked equal to the by-value gateway's."""
    headers = {} if header_length is None else {
        "Inference-Header-Content-Length": str(header_length)}
    answers = [requests.post(pair.url(which, model), data=body, headers=headers, timeout=60)
               for which in (0, 1)]
    for answer in answers:
        assert answer.status_code == 200, answer.text[:300]
    by_ref, by_value = answers
    assert by_ref.content == by_value.content
    for name in ("content-type", "inference-header-content-length", "x-request-id"):
        assert by_ref.headers.get(name) == by_value.headers.get(name)
    assert pair.slots() == 0
    return by_ref


def binary(header: dict, *tensors: bytes) -> tuple[bytes, int]:
    head = requests.models.complexjson.dumps(header).encode()
    return head + b"".join(tensors), len(head)


def test_binary_tensors_in_and_out(pair: Pair) -> None:
    x = np.random.default_rng(1).random((3, WIDTH), dtype=np.float32)
    body, length = binary({"id": "b1", "inputs": [{
        "name": "INPUT0", "datatype": "FP32", "shape": [3, WIDTH],
        "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True}}, x.tobytes())
    answer = both(pair, "echo", body, length)
    json_length = int(answer.headers["inference-header-content-length"])
    assert answer.content[json_length:] == x.tobytes()


def test_json_tensors_in_and_out(pair: Pair) -> None:
    x = np.arange(2 * WIDTH, dtype=np.float32).reshape(2, WIDTH) / 7
    body = requests.models.complexjson.dumps({"id": "j1", "inputs": [{
        "name": "INPUT0", "datatype": "FP32", "shape": [2, WIDTH],
        "data": x.ravel().tolist()}]}).encode()
    answer = both(pair, "echo", body).json()
    assert np.array_equal(np.array(answer["outputs"][0]["data"], np.float32), x.ravel())


def test_bytes_tensors(pair: Pair) -> None:
    words = [bytes([65 + i]) * 5000 for i in range(6)]  # 30 KB: by reference on the lane
    raw = b"".join(len(w).to_bytes(4, "little") + w for w in words)
    body, length = binary({"id": "t1", "inputs": [{
        "name": "INPUT0", "datatype": "BYTES", "shape": [2, 3],
        "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}, raw)
    answer = both(pair, "text", body, length)
    assert answer.content.endswith(raw)


def test_classification(pair: Pair) -> None:
    x = np.random.default_rng(3).random((1, WIDTH), dtype=np.float32)
    body, length = binary({"id": "c1", "inputs": [{
        "name": "INPUT0", "datatype": "FP32", "shape": [1, WIDTH],
        "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 3}}]}, x.tobytes())
    answer = both(pair, "echo", body, length).json()
    best = int(np.argmax(x[0]))
    assert answer["outputs"][0]["data"][0].split(":")[1] == str(best)


def test_an_output_in_a_region_is_left_untouched(pair: Pair) -> None:
    x = np.random.default_rng(4).random((2, WIDTH), dtype=np.float32)
    client = thttp.InferenceServerClient(f"127.0.0.1:{pair.gateways[0].http_port}")
    key = f"/h24-{os.getpid()}-out"
    handle = shm.create_shared_memory_region("out", key, x.nbytes)
    try:
        client.register_system_shared_memory("out", key, x.nbytes)
        body, length = binary({"id": "s1", "inputs": [{
            "name": "INPUT0", "datatype": "FP32", "shape": [2, WIDTH],
            "parameters": {"binary_data_size": x.nbytes}}], "outputs": [{
                "name": "OUTPUT0", "parameters": {"shared_memory_region": "out",
                                                  "shared_memory_byte_size": x.nbytes}}]},
            x.tobytes())
        answer = both(pair, "echo", body, length).json()
        assert "data" not in answer["outputs"][0] and "parameters" not in answer["outputs"][0]
        assert np.array_equal(shm.get_contents_as_numpy(handle, np.float32, x.shape), x)
    finally:
        client.unregister_system_shared_memory("out")
        shm.destroy_shared_memory_region(handle)
