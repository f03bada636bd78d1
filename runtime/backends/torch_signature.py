"""A `torch.export` program's signature as tensor specs: names, datatypes and shapes from its
fake tensors, the batch dimension checked against `max_batch_size`, and the config's reconciled."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.datatypes import NUMPY_DTYPES
from common.model_config import ConfigError, ModelConfig, TensorSpec

#: torch's types as OIP datatypes (BYTES has none: a program takes tensors only).
DATATYPES: dict[torch.dtype, str] = {
    torch.from_numpy(np.empty(0, dtype)).dtype: name
    for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"} | {torch.bfloat16: "BF16"}
TORCH_TYPES = {name: dtype for dtype, name in DATATYPES.items()}
_DIM_FIX = ("export it with a dynamic batch dimension, e.g. torch.export.export(model, args, "
            "dynamic_shapes={{{name!r}: {{0: torch.export.Dim('batch', max={rows})}}}}), or "
            "set max_batch_size: 0 to serve it unbatched")


def children(spec: Any) -> list[Any]:
    """A pytree spec's children (`children()` in newer torch, `children_specs` before)."""
    method = getattr(spec, "children", None)
    return list(method()) if callable(method) else list(spec.children_specs)


def torch_type(spec: TensorSpec) -> torch.dtype:
    return TORCH_TYPES[spec.datatype]


def program_specs(program: Any, config: ModelConfig, path: Path
                  ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The program's inputs (named as forward's arguments) and outputs (named by the keys of a
    returned dict, else OUTPUT__0, OUTPUT__1, ...), batch dimension dropped when batching."""
    names = _argument_names(program, config, path)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user = program.graph_signature.user_inputs
    values = [placeholders[name].meta.get("val") for name in user]
    inputs = tuple(_spec(name, value, config, path, program) for name, value in zip(names, values))
    output = next(n for n in program.graph.nodes if n.op == "output")
    results = [getattr(a, "meta", {}).get("val") for a in output.args[0]]
    spec = program.call_spec.out_spec
    keys = spec.context if spec is not None and spec.type is dict else None
    out_names = [str(k) for k in keys] if keys and len(keys) == len(results) else \
        [f"OUTPUT__{i}" for i in range(len(results))]
    outputs = tuple(_spec(name, value, config, path, None)
                    for name, value in zip(out_names, results))
    return inputs, outputs


def _argument_names(program: Any, config: ModelConfig, path: Path) -> list[str]:
    args, kwargs = children(program.call_spec.in_spec)
    if kwargs.num_leaves or args.num_children != args.num_leaves:
        raise ConfigError(f"{config.source}: {path} takes keyword or nested arguments; export "
                          "the model with positional tensor arguments only")
    names = list(program.module_call_graph[0].signature.forward_arg_names)
    if len(names) != args.num_leaves:
        names = [f"INPUT__{i}" for i in range(args.num_leaves)]
    return names


def _spec(name: str, value: Any, config: ModelConfig, path: Path, program: Any) -> TensorSpec:
    """One tensor; `program` given for an input, whose batch dimension is checked."""
    if not isinstance(value, torch.Tensor) or value.dtype not in DATATYPES:
        what = "input" if program is not None else "output"
        raise ConfigError(f"{config.source}: {path}: {what} {name!r} is "
                          f"{getattr(value, 'dtype', type(value).__name__)}, not a tensor of "
                          f"a served datatype ({', '.join(DATATYPES.values())})")
    dims = [d if isinstance(d, int) else -1 for d in value.shape]
    if config.max_batch_size > 0:
        if program is not None:
            _check_batch(name, value, program, config, path)
        dims = dims[1:]
    return TensorSpec(name, DATATYPES[value.dtype], tuple(dims))


def _check_batch(name: str, value: torch.Tensor, program: Any, config: ModelConfig,
                 path: Path) -> None:
    """Every batch size from 1 to max_batch_size must be one the program takes."""
    rows = config.max_batch_size
    fix = _DIM_FIX.format(name=name, rows=rows)
    if value.dim() == 0:
        raise ConfigError(f"{config.source}: key 'max_batch_size': {path}: input {name!r} is a "
                          f"scalar, with no batch dimension; {fix}")
    first = value.shape[0]
    if isinstance(first, int):
        raise ConfigError(f"{config.source}: key 'max_batch_size': {path}: input {name!r} was "
                          f"exported with a fixed batch of {first}, so it cannot take batches of "
                          f"1 to {rows}; {fix}")
    found = program.range_constraints.get(first.node.expr)
    lower, upper = (found.lower, found.upper) if found is not None else (0, None)
    # NOTE: torch.export raises a lower bound of 0 or 1 to 2; a program still runs batches of 1.
    if lower > 2 or (upper is not None and upper.is_finite and int(upper) < rows):
        shown = lower if lower > 2 else 1
        raise ConfigError(f"{config.source}: key 'max_batch_size': {path}: input {name!r} takes "
                          f"batches of {shown} to {upper}, not every size from 1 to {rows}; "
                          f"{fix}")


def reconcile(declared: Sequence[TensorSpec] | None, found: tuple[TensorSpec, ...],
              config: ModelConfig, key: str) -> tuple[TensorSpec, ...]:
    """The config's tensors when it gives them (checked against the program's, in order), else
    the program's own."""
    if declared is None:
        return found
    where = f"{config.source}: key '{key}'"
    if len(declared) != len(found):
        raise ConfigError(f"{where}: the program has {len(found)} {key} "
                          f"({', '.join(s.name for s in found)}), the config declares "
                          f"{len(declared)}")
    names = [s.name for s in declared]
    if key == "inputs" and sorted(names) == sorted(s.name for s in found) and \
            names != [s.name for s in found]:
        raise ConfigError(f"{where}: list them in the order of forward's arguments "
                          f"({', '.join(s.name for s in found)}): they are passed in order")
    for mine, theirs in zip(declared, found):
        if mine.datatype != theirs.datatype:
            raise ConfigError(f"{where}: {mine.name!r} is {theirs.datatype} in the program, "
                              f"not {mine.datatype}")
        fixed = [(a, b) for a, b in zip(mine.shape, theirs.shape) if a >= 0 and b >= 0]
        if len(mine.shape) != len(theirs.shape) or any(a != b for a, b in fixed):
            raise ConfigError(f"{where}: {mine.name!r} has shape {list(theirs.shape)} in the "
                              f"program (-1: any size), not {list(mine.shape)}")
    return tuple(declared)
