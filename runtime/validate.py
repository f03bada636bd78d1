"""The validation stage: a request checked against its model's signature before it is queued."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.errors import invalid_argument
from common.tensors import (
    contents_to_raw,
    count_text_elements,
    element_count,
    expected_byte_size,
)
from runtime.classify import class_count
from runtime.decode import InferCall
from runtime.device_rows import DeviceSpan, Part
from runtime.model import ServedModel


@dataclass(slots=True)
class Checked:
    """A request that fits its model: input bytes and shapes in signature order."""

    inputs: list[Part]
    shapes: list[tuple[int, ...]]
    batch_size: int
    shape_key: tuple
    outputs: tuple[str, ...]
    #: Outputs asked as classes (the classification extension): name → k.
    classes: dict[str, int] | None = None


def check(call: InferCall, model: ServedModel) -> Checked:
    """Raise INVALID_ARGUMENT naming model, input, expected and received; else the parts."""
    request, raw = call.message, call.raw
    if raw and len(raw) != len(request.inputs):
        raise invalid_argument(f"{model.label}: {len(request.inputs)} inputs but "
                               f"{len(raw)} raw_input_contents")
    count = len(model.inputs)
    inputs: list[Part | None] = [None] * count
    shapes: list[tuple[int, ...]] = [()] * count
    for i, tensor in enumerate(request.inputs):
        j = _index(model, tensor.name)
        if inputs[j] is not None:
            raise invalid_argument(f"input '{tensor.name}' of {model.label}: given twice")
        shapes[j] = shape = tuple(tensor.shape)
        inputs[j] = _payload(model, j, tensor, shape, raw[i] if raw else None)
    if None in inputs:
        missing = [spec.name for j, spec in enumerate(model.inputs) if inputs[j] is None]
        raise invalid_argument(f"{model.label}: missing inputs {missing}; expected "
                               f"{[s.name for s in model.inputs]}")
    asked = request.outputs
    return Checked(
        inputs,  # type: ignore[arg-type]
        shapes,
        _batch_size(model, shapes),
        tuple([s[1:] for s in shapes]) if model.batched else tuple(shapes),
        _requested(asked, model) if asked else (),
        _classes(asked, model) if asked else None,
    )


def _index(model: ServedModel, name: str) -> int:
    j = model.input_index.get(name)
    if j is None:
        raise invalid_argument(f"{model.label} has no input '{name}'; expected "
                               f"{[s.name for s in model.inputs]}")
    return j


def _payload(model: ServedModel, j: int, tensor: Any, shape: tuple[int, ...],
             raw: Part | None) -> Part:
    spec, what = model.inputs[j], model.input_what[j]
    if tensor.datatype != spec.datatype:
        raise invalid_argument(f"{what}: expected datatype {spec.datatype}, got "
                               f"{tensor.datatype or 'none'}")
    expected = model.full_shapes[j]
    fits = len(shape) == len(expected)
    for e, d in zip(expected, shape):  # NOTE: a loop: any() of a generator costs more here
        if e != d and e != -1:
            fits = False
    if not fits:
        raise invalid_argument(f"{what}: expected shape {list(expected)}, got {list(shape)}")
    count = element_count(shape, what)
    if raw is None:
        if tensor.HasField("contents"):
            raw = contents_to_raw(spec.datatype, tensor.contents, what)
        else:
            raise invalid_argument(f"{what}: no data (set contents or raw_input_contents)")
    elif tensor.HasField("contents"):
        raise invalid_argument(f"{what}: contents must not be set when raw_input_contents is used")
    size = expected_byte_size(spec.datatype, count)
    if size is not None and len(raw) != size:
        raise invalid_argument(f"{what}: shape {list(shape)} of {spec.datatype} takes {size} "
                               f"bytes, got {len(raw)}")
    # NOTE: counted in place; splitting into a list would copy every element of a large tensor.
    # Text checked here, per request: in the executor one bad element would fail its batch.
    if size is None and (isinstance(raw, DeviceSpan) or count_text_elements(raw, what) != count):
        raise invalid_argument(f"{what}: shape {list(shape)} needs {count} BYTES elements")
    return raw


def _batch_size(model: ServedModel, shapes: list[tuple[int, ...]]) -> int:
    if not model.batched:
        return 1
    sizes = {shapes[0][0]} if len(shapes) == 1 else {s[0] for s in shapes}
    if len(sizes) != 1:
        raise invalid_argument(f"{model.label}: inputs disagree on the batch size: {sorted(sizes)}")
    batch = sizes.pop()
    limit = model.config.max_batch_size
    if batch < 1 or batch > limit:
        raise invalid_argument(f"{model.label}: batch size {batch} is outside 1..{limit} "
                               f"(max_batch_size {limit})")
    return batch


def _requested(asked: Any, model: ServedModel) -> tuple[str, ...]:
    names = tuple(o.name for o in asked)
    for name in names:
        if name not in model.output_names:
            raise invalid_argument(f"{model.label} has no output '{name}'; outputs: "
                                   f"{sorted(model.output_names)}")
    if len(set(names)) != len(names):
        raise invalid_argument(f"{model.label}: outputs requested more than once: {list(names)}")
    return names


def _classes(asked: Any, model: ServedModel) -> dict[str, int] | None:
    """The outputs asked with parameters: only the classification extension takes any."""
    found = {}
    for output in asked:
        if output.parameters:
            spec = next(s for s in model.outputs if s.name == output.name)
            k = class_count(model, spec, output.parameters)
            if k is not None:
                found[output.name] = k
    return found or None
