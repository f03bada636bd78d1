"""What every backend offers the executor: a signature and a `run` over numpy arrays."""

from __future__ import annotations

import ctypes
import functools
from typing import Protocol

import numpy as np

from common.model_config import TensorSpec


class Backend(Protocol):
    """One loaded model instance. `run` is called from one executor thread at a time, or from
    as many at once as an optional `pipeline_depth` attribute says (default 1). Where an
    optional `gathers_on_device` is true, an input with rows in CUDA regions comes to `run` as
    a `runtime.device_rows.Gather` for the backend to copy on the GPU (default: an array)."""

    platform: str
    backend_name: str
    device: str
    #: Inputs and outputs, shapes without the batch dimension when the model batches.
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        """Run one batch; `feeds` and the result follow the order of inputs and outputs."""
        ...


@functools.cache
def cuda_device_count() -> int:
    """GPUs the NVIDIA driver sees; asks the driver itself so no framework is imported for it."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def resolve_device(device: str) -> str:
    """'auto' becomes the first GPU when one is visible, else the CPU."""
    if device != "auto":
        return device
    return "cuda:0" if cuda_device_count() > 0 else "cpu"
