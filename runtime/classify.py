"""The classification extension: an output asked with `classification: k` answers its top k
classes per row as BYTES "score:index[:label]", best first, as Triton does."""

from __future__ import annotations

from typing import Any

import numpy as np

from common import regions
from common.datatypes import NUMPY_DTYPES
from common.errors import invalid_argument
from common.model_config import ConfigError, TensorSpec
from common.tensors import serialize_bytes
from runtime.executor import Output

PARAMETER = "classification"
#: The output parameters a request may set; any other is refused by name, not ignored.
OUTPUT_PARAMETERS = frozenset({PARAMETER, "binary_data", regions.REGION, regions.BYTE_SIZE,
                               regions.OFFSET})
_UNSORTABLE = frozenset({"BYTES", "BOOL"})


def class_count(model: Any, spec: TensorSpec, parameters: Any) -> int | None:
    """The k a requested output's parameters ask for (None: not asked); refuses what does not
    fit: k below 1 or above the class count, a non-numeric output, a shape other than
    [batch, N] (or [N] when the model does not batch)."""
    unknown = sorted(set(parameters) - OUTPUT_PARAMETERS)
    what = f"output '{spec.name}' of {model.label}"
    if unknown:
        raise invalid_argument(f"{what}: unsupported output parameter(s) {unknown}; "
                               f"supported: {sorted(OUTPUT_PARAMETERS)}")
    if PARAMETER not in parameters:
        return None
    value = parameters[PARAMETER]
    if value.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param"):
        raise invalid_argument(f"{what}: 'classification' must be an integer class count")
    k = value.int64_param or value.uint64_param
    if spec.datatype in _UNSORTABLE:
        raise invalid_argument(f"{what}: classification needs a numeric output, not "
                               f"{spec.datatype}")
    if len(spec.shape) != 1:
        raise invalid_argument(f"{what}: classification needs an output of shape "
                               f"{'[batch, N]' if model.batched else '[N]'}, not "
                               f"{model.full_shape(spec)}")
    classes = spec.shape[0]
    if k < 1 or (classes > 0 and k > classes):
        raise invalid_argument(f"{what}: 'classification' must be 1 to "
                               f"{classes if classes > 0 else 'N'} classes, got {k}")
    return k


def top_k(out: Output, k: int, labels: tuple[str, ...] | None, batched: bool) -> Output:
    """`out` as its k best classes per row; the scores written as C's "%f" (Triton's
    std::to_string), integers as integers."""
    values = np.frombuffer(out.raw, NUMPY_DTYPES[out.datatype]).reshape(out.shape)
    rows = values if batched else values[None, :]
    if k > rows.shape[1]:
        raise invalid_argument(f"output '{out.name}': 'classification' asks {k} classes of "
                               f"{rows.shape[1]}")
    # NOTE: stable, so equal scores keep the lower class index first.
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(rows, order, axis=1)
    form = "{:d}:{:d}" if values.dtype.kind in "iu" else "{:f}:{:d}"
    names = labels or ()
    elements = [
        (form.format(score, index) + (f":{names[index]}" if index < len(names) else "")).encode()
        for score, index in zip(best.reshape(-1).tolist(), order.reshape(-1).tolist())
    ]
    shape = (rows.shape[0], k) if batched else (k,)
    return Output(out.name, "BYTES", shape, serialize_bytes(elements))


def check_labels(model_name: str, outputs: tuple[TensorSpec, ...],
                 labels: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
    """Raise ConfigError for labels of an output the model lacks, or fewer labels than classes."""
    specs = {spec.name: spec for spec in outputs}
    for name, found in labels:
        spec = specs.get(name)
        if spec is None:
            raise ConfigError(f"model '{model_name}': labels given for output '{name}', which "
                              f"it does not have; outputs: {sorted(specs)}")
        classes = spec.shape[-1] if spec.shape else 1
        if classes > len(found):
            raise ConfigError(f"model '{model_name}': output '{name}' has {classes} classes "
                              f"but {len(found)} labels (expected one label a line per class)")
