"""The PyTorch backend: TorchScript modules, `torch.export` programs and AOTInductor packages
under `torch.inference_mode`, on the config's device.

BYTES tensors are TorchScript's `List[str]`, flat in row-major order, as Triton's libtorch backend.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.model_config import ConfigError, ModelConfig
from runtime.backends.base import resolve_device
from runtime.backends.torch_common import as_outputs, declared_type, is_strings
from runtime.backends.torch_export import load_pt2
from runtime.backends.torch_formats import TORCHSCRIPT, check_format

log = logging.getLogger("tensorgate.runtime")
_threads_set = False
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


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

    def __init__(self, path: Path, config: ModelConfig, threads: int, quiet: bool = False
                 ) -> None:
        if config.optimization.gpu_accelerators:
            raise ConfigError(f"{config.source}: key 'optimization.execution_accelerators': "
                              "TensorRT runs ONNX models only; remove it for a PyTorch model")
        configure_threads(threads)
        self.device = resolve_device(config.device)
        kind = check_format(path)
        if kind == TORCHSCRIPT:
            self.module = _load_script(path, config, self.device)
        else:
            loaded = load_pt2(path, kind, config, self.device)
            self.module, config, self.device = loaded.module, loaded.config, loaded.device
        self.autocast = autocast_dtype(config, self.device)
        assert config.inputs is not None and config.outputs is not None
        self.inputs = config.inputs
        self.outputs = config.outputs
        self.batched = config.max_batch_size > 0
        self.cuda = self._cuda_runner(config, quiet)
        #: A batch's inputs in CUDA regions go to the CUDA runner as spans, copied on the GPU.
        self.gathers_on_device = self.cuda is not None
        #: Batches the scheduler may run at once on this instance: one per CUDA lane.
        self.pipeline_depth = self.cuda.DEPTH if self.cuda is not None else 1

    def _cuda_runner(self, config: ModelConfig, quiet: bool) -> Any:
        """The GPU path (pinned copies on their own stream, CUDA graphs) for numeric tensors."""
        numeric = all(s.datatype != "BYTES" for s in (*self.inputs, *self.outputs))
        if self.device.startswith("cuda") and numeric:
            from runtime.backends.torch_cuda import CudaRunner

            return CudaRunner(self.module, config, self.device, self.autocast)
        where = f"device {self.device}" if numeric else "a BYTES tensor"
        asked = {"graphs": config.optimization.cuda_graphs,
                 "channels_last": config.optimization.channels_last}
        for key in [k for k, on in asked.items() if on and not quiet]:
            log.warning("model %s: optimization.cuda.%s is set but the model has %s; it runs "
                        "without it", config.name, key, where)
        return None

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        if self.cuda is not None:
            result: list[np.ndarray] = self.cuda.run(feeds)
            return result
        with torch.inference_mode(), self._autocast():
            args = [_argument(a, self.device) for a in feeds]
            outputs = as_outputs(self.module(*args), self.outputs)
        return [_array(declared_type(r, spec), spec.shape, self.batched)
                for r, spec in zip(outputs, self.outputs)]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.partition(":")[0], dtype=self.autocast)


def _load_script(path: Path, config: ModelConfig, device: str) -> Any:
    if config.inputs is None or config.outputs is None:
        raise ConfigError(f"{config.source}: keys 'inputs' and 'outputs' are required for "
                          "a TorchScript model (it does not describe its own signature)")
    with warnings.catch_warnings():
        # NOTE: TorchScript is deprecated upstream but remains the format Triton users ship.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        module = torch.jit.load(str(path), map_location=device)
    module.eval()
    return module


def autocast_dtype(config: ModelConfig, device: str) -> torch.dtype | None:
    """The autocast type `precision` asks for, refused at load where this torch and device
    cannot run it (autocast would otherwise turn itself off with a mere warning)."""
    dtype = AUTOCAST.get(config.precision)
    if dtype is None:
        return None
    kind = device.partition(":")[0]
    problem = _autocast_problem(kind, dtype)
    if problem is None and dtype == torch.bfloat16 and kind == "cuda" \
            and not torch.cuda.is_bf16_supported():
        problem = "this GPU has no bfloat16 support"
    if problem is not None:
        raise ConfigError(f"{config.source}: key 'precision': model {config.name} cannot run "
                          f"in {config.precision} on device {device}: {problem}; use "
                          f"precision: fp32 or another device")
    return dtype


def _autocast_problem(kind: str, dtype: torch.dtype) -> str | None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autocast(kind, dtype=dtype):
                enabled = torch.is_autocast_enabled(kind)
        except (RuntimeError, ValueError) as exc:
            return f"torch.autocast refused it ({exc})"
    if not enabled:
        said = "; ".join(str(w.message) for w in caught)
        return f"torch {torch.__version__} turns autocast off for it ({said or 'no reason'})"
    return None


def _argument(array: np.ndarray, device: str) -> torch.Tensor | list[str]:
    if array.dtype == object:
        # NOTE: TorchScript has no bytes type; the executor decoded the elements as UTF-8.
        return [str(v) for v in array.reshape(-1)]
    return _tensor(array).to(device)


def _array(result: Any, dims: tuple[int, ...], batched: bool) -> np.ndarray:
    if not is_strings(result):
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
