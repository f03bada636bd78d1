"""`model.pt2`: a `torch.export` program, its signature read from the program (what the config
omits is filled from it), or an AOTInductor package, whose signature the config gives.

Both become a module the PyTorch backend runs as it runs TorchScript (batching, precision,
devices and the CUDA runner are the same). Nothing is compiled at load.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from common.model_config import ConfigError, ModelConfig, TensorSpec
from runtime.backends.torch_formats import AOTI, aoti_device
from runtime.backends.torch_signature import children, program_specs, reconcile, torch_type

#: torch.export's archive format, move_to_device_pass and aoti_load_package(device_index=).
MIN_TORCH = (2, 7)


@dataclass
class Loaded:
    """A `.pt2` ready to run: its module, the config with its signature, and its device."""

    module: torch.nn.Module
    config: ModelConfig
    device: str


def load_pt2(path: Path, kind: str, config: ModelConfig, device: str) -> Loaded:
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) < MIN_TORCH:
        raise ConfigError(f"{path}: serving {kind} needs torch "
                          f"{'.'.join(map(str, MIN_TORCH))} or newer; this is torch "
                          f"{torch.__version__}")
    if kind == AOTI:
        return _load_aoti(path, config, device)
    program = torch.export.load(str(path)) if path.suffix == ".pt2" else _load_open(path)
    from torch.export.passes import move_to_device_pass

    program = move_to_device_pass(program, torch.device(device))
    inputs, outputs = program_specs(program, config, path)
    config = dataclasses.replace(config, inputs=reconcile(config.inputs, inputs, config, "inputs"),
                                 outputs=reconcile(config.outputs, outputs, config, "outputs"))
    # NOTE: an exported graph has no train/eval switch (it was traced in the mode it was
    # exported in); its module refuses .eval().
    return Loaded(Flat(program.module()), config, device)


def _load_open(path: Path) -> Any:
    # torch.export.load wants a .pt2 name or a buffer: a default_model_filename may be neither.
    with path.open("rb") as handle:
        return torch.export.load(handle)


class Flat(torch.nn.Module):
    """A program's module answering its outputs as a tuple in the program's order, so the
    config names them by position (a returned dict's keys need not be the config's names)."""

    def __init__(self, program: torch.nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tree_leaves(self.program(*args)))


class AotiModule(torch.nn.Module):
    """An AOTInductor package as a module (no parameters: its weights are inside it). A batch
    below the smallest one it takes is padded with copies of its first row, then cut back."""

    def __init__(self, runner: Any, min_rows: int = 1) -> None:
        super().__init__()
        self.runner, self.min_rows = runner, min_rows

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = args[0].shape[0] if args and args[0].dim() > 0 else self.min_rows
        if rows >= self.min_rows:
            return tuple(tree_leaves(self.runner(*args)))
        pad = self.min_rows - rows
        padded = [torch.cat([a, a[:1].expand(pad, *a.shape[1:])]) for a in args]
        return tuple(r[:rows] for r in tree_leaves(self.runner(*padded)))


def _load_aoti(path: Path, config: ModelConfig, device: str) -> Loaded:
    where = f"{path} (an AOTInductor package)"
    if config.inputs is None or config.outputs is None:
        raise ConfigError(f"{config.source}: keys 'inputs' and 'outputs' are required for "
                          f"{where}: a compiled package does not describe its tensors")
    if config.precision != "fp32":
        raise ConfigError(f"{config.source}: key 'precision': {where} runs in the precision it "
                          "was compiled in; compile it from an fp16/bf16 program, or remove "
                          "the key")
    if config.optimization.cuda_graphs or config.optimization.channels_last:
        raise ConfigError(f"{config.source}: key 'optimization.cuda': {where} keeps the layout "
                          "and kernels it was compiled with; remove graphs/channels_last, or "
                          "serve the torch.export program instead")
    device = _aoti_device(path, config, device)
    # Inputs are checked against the compiled shapes, else a batch size the package was not
    # compiled for runs out of bounds. NOTE: each package reads it once, at its first call.
    if os.environ.get("AOTI_RUNTIME_CHECK_INPUTS") != "1":
        os.environ["AOTI_RUNTIME_CHECK_INPUTS"] = "1"
    index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else -1
    runner = torch._inductor.aoti_load_package(str(path), device_index=index)
    _check_call_spec(runner, config, where)
    config = dataclasses.replace(config, optimization=dataclasses.replace(
        config.optimization, channels_last=False))
    module = AotiModule(runner)
    if config.max_batch_size > 0:
        module.min_rows = _smallest_batch(runner, config, device, where)
    return Loaded(module, config, device)


def _aoti_device(path: Path, config: ModelConfig, device: str) -> str:
    """The config's device; with `auto`, the one the package was compiled for."""
    compiled = aoti_device(path)
    if config.device == "auto":
        device = "cuda:0" if compiled == "cuda" else compiled
    if device.partition(":")[0] != compiled:
        raise ConfigError(f"{config.source}: key 'device': {path} was compiled for {compiled} "
                          f"and cannot run on {device}; compile it for that device or set "
                          f"device: {compiled}")
    return device


def _check_call_spec(runner: Any, config: ModelConfig, where: str) -> None:
    from torch.utils._pytree import treespec_loads

    in_text, out_text = runner.loader.get_call_spec()
    args, kwargs = children(treespec_loads(in_text))
    assert config.inputs is not None and config.outputs is not None
    if kwargs.num_leaves or args.num_children != args.num_leaves:
        raise ConfigError(f"{config.source}: {where} takes keyword or nested arguments; "
                          "export the model with positional tensor arguments only")
    for key, found, declared in (("inputs", args.num_leaves, config.inputs),
                                 ("outputs", treespec_loads(out_text).num_leaves,
                                  config.outputs)):
        if found != len(declared):
            raise ConfigError(f"{config.source}: key '{key}': {where} has {found}, the config "
                              f"declares {len(declared)}")


def _smallest_batch(runner: Any, config: ModelConfig, device: str, where: str) -> int:
    """1, or 2 where the package keeps torch.export's lower bound of 2 (batches of one are then
    padded); a package compiled for one batch size is refused."""
    assert config.inputs is not None
    if any(d < 0 for s in config.inputs for d in s.shape):
        return 1  # NOTE: no shape to probe with; the warm-up runs what it can
    tried: dict[int, str] = {}
    for rows in sorted({1, 2, config.max_batch_size}):
        try:
            runner(*[_zeros(spec, rows, device) for spec in config.inputs])
        except RuntimeError as exc:
            tried[rows] = str(exc).strip().splitlines()[0]
    # NOTE: a batch of one alone refused is torch.export's lower bound, not a fixed batch.
    refused = {rows: said for rows, said in tried.items() if rows != 1}
    if refused:
        rows, said = next(iter(refused.items()))
        raise ConfigError(f"{config.source}: key 'max_batch_size': {where} does not take a "
                          f"batch of {rows} ({said}): it must take every size from 1 to "
                          f"max_batch_size; compile it from a program exported with a dynamic "
                          f"batch dimension (torch.export.Dim('batch', max="
                          f"{config.max_batch_size})), lower max_batch_size to what it takes, "
                          "or set max_batch_size: 0")
    return 2 if tried else 1


def _zeros(spec: TensorSpec, rows: int, device: str) -> torch.Tensor:
    return torch.zeros((rows, *spec.shape), dtype=torch_type(spec), device=device)
