"""`echo`, a model that answers its input as it came (FP32 [-1, 8192]: 32 KiB a row, so its
tensors go by reference on a unix lane), and can be held: for the lane's tests only."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from common.model_config import DynamicBatching, ModelConfig, TensorSpec
from runtime.backends.base import Backend
from runtime.model import ServedModel

WIDTH = 8192
INPUT = TensorSpec("INPUT0", "FP32", (WIDTH,))
OUTPUT = TensorSpec("OUTPUT0", "FP32", (WIDTH,))


class EchoBackend:
    """Answers its input; while ``gate`` is clear, waits for it (calls stay in flight)."""

    platform = "python"
    backend_name = "echo"
    device = "cpu"
    inputs: tuple[TensorSpec, ...] = (INPUT,)
    outputs: tuple[TensorSpec, ...] = (OUTPUT,)

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.waiting = 0

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        self.waiting += 1
        try:
            self.gate.wait(60)  # NOTE: a ceiling, so a test that forgets to open it still ends
        finally:
            self.waiting -= 1
        return [np.array(feeds[0], copy=True)]


def echo_model(gate: threading.Event, name: str = "echo") -> tuple[ServedModel, EchoBackend]:
    config = ModelConfig(name=name, source=Path("<echo>"), max_batch_size=8,
                         dynamic_batching=DynamicBatching(max_queue_size=1024),
                         instance_count=1, device="cpu", inputs=(INPUT,), outputs=(OUTPUT,))
    backend = EchoBackend(gate)
    backends: list[Backend] = [backend]
    return ServedModel(config, 1, backends, warmup_ns=float("inf")), backend
