"""What the PyTorch backend's CPU and CUDA paths share: a module's result as the declared
outputs, in their declared types."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from common.model_config import TensorSpec

#: Floating outputs are cast back to their declared type when a model runs in half precision.
FLOATS = {"FP16": torch.float16, "BF16": torch.bfloat16, "FP32": torch.float32,
          "FP64": torch.float64}


def is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def as_outputs(result: Any, specs: Sequence[TensorSpec]) -> tuple[Any, ...]:
    """A module's result as one value per declared output, in their order."""
    if isinstance(result, torch.Tensor) or is_strings(result):
        return (result,)
    if isinstance(result, dict):
        return tuple(result[s.name] for s in specs)
    return tuple(result)


def declared_type(result: Any, spec: TensorSpec) -> Any:
    """A floating output in its declared type (autocast computes fp16/bf16 ones)."""
    wanted = FLOATS.get(spec.datatype)
    if wanted is None or not isinstance(result, torch.Tensor) or result.dtype == wanted \
            or not result.is_floating_point():
        return result
    return result.to(wanted)
