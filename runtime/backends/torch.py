"""The PyTorch backend: TorchScript modules under `torch.inference_mode`, on the config's device.

BYTES tensors are TorchScript's `List[str]`, flat in row-major order, as Triton's libtorch backend.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.model_config import ConfigError, ModelConfig
from runtime.backends.base import resolve_device

_threads_set = False


def configure_threads(threads: int) -> None:
    """Size torch's thread pools once per process (interop can only be set before first use)."""
    global _threads_set
    if _threads_set:
        return
    torch.set_num_threads(max(1, threads))
    # Interop threads can only be sized before torch first runs in parallel.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    _threads_set = True


class TorchBackend:
    platform = "pytorch_libtorch"
    backend_name = "pytorch"

    def __init__(self, path: Path, config: ModelConfig, threads: int) -> None:
        if config.inputs is None or config.outputs is None:
            raise ConfigError(f"{config.source}: keys 'inputs' and 'outputs' are required for "
                              "a TorchScript model (it does not describe its own signature)")
        configure_threads(threads)
        self.device = resolve_device(config.device)
        with warnings.catch_warnings():
            # NOTE: TorchScript is deprecated upstream but remains the format Triton users ship.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            self.module = torch.jit.load(str(path), map_location=self.device)
        self.module.eval()
        self.inputs = config.inputs
        self.outputs = config.outputs
        self.batched = config.max_batch_size > 0

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            args = [_argument(a, self.device) for a in feeds]
            result = self.module(*args)
        if isinstance(result, torch.Tensor) or _is_strings(result):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result[s.name] for s in self.outputs)
        return [_array(r, spec.shape, self.batched) for r, spec in zip(result, self.outputs)]


def _argument(array: np.ndarray, device: str) -> torch.Tensor | list[str]:
    if array.dtype == object:
        # NOTE: TorchScript has no bytes type; the executor decoded the elements as UTF-8.
        return [str(v) for v in array.reshape(-1)]
    return _tensor(array).to(device)


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _array(result: Any, dims: tuple[int, ...], batched: bool) -> np.ndarray:
    if not _is_strings(result):
        return result.detach().cpu().numpy()
    array = np.empty(len(result), dtype=object)
    array[:] = result
    # A flat list takes its declared shape where that is fixed (rows first when batching).
    if all(d > 0 for d in dims):
        return array.reshape((-1, *dims) if batched else dims)
    return array


def _tensor(array: np.ndarray) -> torch.Tensor:
    # NOTE: arrays over received bytes are read-only; torch needs a writable buffer.
    return torch.from_numpy(array if array.flags.writeable else array.copy())
