"""What every backend offers the executor: a signature and a `run` over numpy arrays."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from common.model_config import TensorSpec


class Backend(Protocol):
    """One loaded model instance. `run` is called from one executor thread at a time."""

    platform: str
    backend_name: str
    device: str
    #: Inputs and outputs, shapes without the batch dimension when the model batches.
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        """Run one batch; `feeds` and the result follow the order of inputs and outputs."""
        ...


def resolve_device(device: str) -> str:
    """'auto' becomes the first GPU when one is visible, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"
