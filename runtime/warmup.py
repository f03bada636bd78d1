"""Warm-up: inputs generated from a version's signature, run before it takes traffic, checked.

A version whose outputs miss their declared shapes or are not finite never serves.
"""

from __future__ import annotations

import numpy as np

from common.datatypes import NUMPY_DTYPES
from common.model_config import ModelConfig
from runtime.backends.base import Backend


class ValidationError(Exception):
    """Why a version may not take traffic."""


def warm_up_inputs(backend: Backend, config: ModelConfig, seed: int = 0) -> list[np.ndarray]:
    """Inputs generated from the signature: two rows when the model batches, -1 dims as 1."""
    rng = np.random.default_rng(seed)
    feeds = []
    for spec in backend.inputs:
        if spec.datatype not in NUMPY_DTYPES:
            raise ValidationError(f"input '{spec.name}' is {spec.datatype}: warm-up inputs "
                                  "cannot be generated for it")
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        if config.max_batch_size > 0:
            shape = (min(2, config.max_batch_size), *shape)
        if spec.datatype == "BYTES":
            # Strings as the executor hands them over: str, one digit each.
            feeds.append(np.full(shape, "0", dtype=object))
            continue
        dtype = np.dtype(NUMPY_DTYPES[spec.datatype])
        values = rng.random(shape) if dtype.kind == "f" else np.zeros(shape)
        feeds.append(values.astype(dtype))
    return feeds


def validate(backend: Backend, config: ModelConfig) -> None:
    """Run generated inputs; the outputs must have the declared shapes and be finite."""
    feeds = warm_up_inputs(backend, config)
    try:
        outputs = backend.run(feeds)
    except Exception as exc:  # any failure of the model is a validation failure
        raise ValidationError(f"running the warm-up inputs failed: {exc}") from None
    if len(outputs) != len(backend.outputs):
        raise ValidationError(f"{len(outputs)} outputs, but the config declares "
                              f"{len(backend.outputs)}")
    rows = feeds[0].shape[0] if config.max_batch_size > 0 and feeds else None
    for spec, value in zip(backend.outputs, outputs):
        array = np.asarray(value)
        declared = ((rows,) if rows is not None else ()) + tuple(spec.shape)
        if len(array.shape) != len(declared) or any(
                d >= 0 and d != got for d, got in zip(declared, array.shape)):
            raise ValidationError(f"output '{spec.name}' has shape {list(array.shape)}, the "
                                  f"config declares {list(declared)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValidationError(f"output '{spec.name}' is not finite (NaN or infinity) for "
                                  "the warm-up inputs")
