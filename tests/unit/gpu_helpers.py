"""What the GPU path tests share: configs, a tiny convolutional model, the CUDA gate."""

from __future__ import annotations

import ctypes
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common.model_spec import Accelerator, DynamicBatching, ModelConfig, Optimization, TensorSpec
from runtime.device_rows import DeviceSpan, Gather, Part

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"
ONNX = DIGITS / "1" / "model.onnx"
GRAPHS = Optimization(cuda_graphs=True)
TRT = Optimization((Accelerator("tensorrt", (("precision_mode", "FP16"),)),))
IMAGE = (TensorSpec("IMAGE", "FP32", (3, 16, 16)),)
SCORES = (TensorSpec("SCORES", "FP32", (4,)),)


def config(**changes: object) -> ModelConfig:
    base = ModelConfig("m", Path("/repo/m/config.yaml"), max_batch_size=64,
                       dynamic_batching=DynamicBatching(preferred_batch_size=(8, 64, 128)))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(image)).mean(dim=(2, 3)))


def answers_like(runner: Any, reference: torch.nn.Module, rows: tuple[int, ...], seed: int,
                 autocast: torch.dtype | None) -> None:
    """The runner's answers to random images of each batch size equal the eager module's."""
    rng = np.random.default_rng(seed)
    for count in rows:
        x = rng.random((count, 3, 16, 16), dtype=np.float32)
        got = runner.run([x])[0]
        with torch.inference_mode():
            want = reference(torch.from_numpy(x)).numpy()
        assert got.dtype == np.float32 and got.shape == (count, 4)
        np.testing.assert_allclose(got, want, atol=5e-2 if autocast else 1e-5)


def needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: none is visible")



def host_copy(target: int, source: int, size: int, device: int) -> None:
    ctypes.memmove(target, source, size)


def scattered(x: np.ndarray, datatype: str) -> tuple[Gather, np.ndarray]:
    """``x`` as a batch of one-row requests, every other one a span of 'device memory' (host
    memory here, read with host_copy), and the memory the spans point into, to keep alive."""
    rows = np.ascontiguousarray(x).reshape(len(x), -1).view(np.uint8).copy()
    parts: list[Part] = [DeviceSpan(int(row.ctypes.data), row.nbytes, 0, host_copy) if i % 2
                         else row.tobytes() for i, row in enumerate(rows)]
    return Gather(tuple(parts), x.shape, datatype), rows
