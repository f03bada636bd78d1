"""The ONNX Runtime backend: TensorRT or CUDA provider on a GPU, the CPU provider otherwise."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.datatypes import ONNX_TO_OIP
from common.model_config import ConfigError, ModelConfig, TensorSpec
from runtime.backends.base import resolve_device
from runtime.backends.batch_sizes import capture_sizes, check_fixed_shapes
from runtime.backends.onnx_cuda import BoundRunner, run_gathered
from runtime.backends.onnx_options import (
    CPU,
    CUDA,
    TENSORRT,
    Provider,
    model_source,
    session,
    tensorrt_loads,
    tensorrt_options,
    wants_tensorrt,
    warn_fallback,
)
from runtime.device_rows import Gather

log = logging.getLogger("tensorgate.runtime")


class OnnxBackend:
    platform = "onnxruntime_onnx"
    backend_name = "onnxruntime"

    def __init__(self, path: Path, config: ModelConfig, threads: int, quiet: bool = False
                 ) -> None:
        if config.optimization.channels_last is not None:
            raise ConfigError(f"{config.source}: key 'optimization.cuda.channels_last': PyTorch "
                              "models only (ONNX Runtime picks its own layouts); remove it for "
                              "an ONNX model")
        self.device = resolve_device(config.device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # NOTE: spinning threads would steal the cores the event loop needs between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model_source(path, config)
        providers = self._providers(config, path, quiet)
        self.session = session(source, options, providers, config, self.device)
        if self.device.startswith("cuda") and CUDA not in self.session.get_providers():
            self.device = _without_cuda(config, quiet)
        if providers[0][0] == TENSORRT and not quiet:
            self._check_tensorrt(config)
        batched = config.max_batch_size > 0
        found_in = _specs(self.session.get_inputs(), batched, path)
        found_out = _specs(self.session.get_outputs(), batched, path)
        self.inputs = _reconcile(config.inputs, found_in, config.source, "inputs")
        self.outputs = _reconcile(config.outputs, found_out, config.source, "outputs")
        self._input_names = [s.name for s in self.inputs]
        self._output_names = [s.name for s in self.outputs]
        self.bound = self._bound_runner(config, quiet)
        #: A batch's inputs in CUDA regions come as spans, copied into device buffers.
        self.gathers_on_device = self.device.startswith("cuda")
        self._direct = _direct_run(self.session)

    def _providers(self, config: ModelConfig, path: Path, quiet: bool) -> list[Provider]:
        if not self.device.startswith("cuda"):
            if wants_tensorrt(config) and not quiet:
                warn_fallback(config, f"the model runs on device {self.device}", "the CPU")
            return [CPU]
        _load_cuda_libraries()
        index = int(self.device.partition(":")[2] or 0)
        # NOTE: dynamic batching runs every batch size up to the maximum; EXHAUSTIVE (the
        # default) benchmarks cuDNN's algorithms for each new shape, seconds on the hot path.
        options: dict[str, object] = {"device_id": index, "cudnn_conv_algo_search": "HEURISTIC"}
        if config.optimization.cuda_graphs:
            options["enable_cuda_graph"] = "1"
        providers: list[Provider] = [(CUDA, options), CPU]
        if wants_tensorrt(config):
            problem = tensorrt_loads()
            if problem is None:
                providers.insert(0, (TENSORRT, tensorrt_options(config, path, index)))
            elif not quiet:
                warn_fallback(config, problem, "ONNX Runtime's CUDA provider")
        return providers

    def _check_tensorrt(self, config: ModelConfig) -> None:
        """TensorRT was asked of the session: its provider list says whether it took it."""
        if TENSORRT not in self.session.get_providers():
            runs_on = "ONNX Runtime's CUDA provider" if self.device != "cpu" else "the CPU"
            warn_fallback(config, "the session did not take it", runs_on)

    def _bound_runner(self, config: ModelConfig, quiet: bool) -> BoundRunner | None:
        """CUDA graphs replay device buffers bound once per batch size (IOBinding)."""
        if not config.optimization.cuda_graphs:
            return None
        if not self.device.startswith("cuda"):
            if not quiet:
                log.warning("model %s: optimization.cuda.graphs is set but the model runs on "
                            "device %s; it runs without CUDA graphs", config.name, self.device)
            return None
        check_fixed_shapes(config, (*self.inputs, *self.outputs))
        return BoundRunner(self.session, self.inputs, self.outputs, capture_sizes(config),
                           self._device_index())

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        if self.bound is not None:
            return self.bound.run(feeds)
        if self.gathers_on_device and any(isinstance(f, Gather) for f in feeds):
            return run_gathered(self.session, self.inputs, self._output_names, feeds,
                                self.device.partition(":")[0], self._device_index())
        feed = dict(zip(self._input_names, feeds))
        if self._direct is not None:
            return self._direct(self._output_names, feed, None)  # type: ignore[no-any-return]
        result = self.session.run(self._output_names, feed)
        return [np.asarray(r) for r in result]

    def _device_index(self) -> int:
        return int(self.device.partition(":")[2] or 0)


def _direct_run(session: ort.InferenceSession) -> Callable[..., list] | None:
    """ONNX Runtime's own run, under its Python wrapper, for a session on the CPU provider
    alone: the wrapper re-checks input names the validate stage has checked and retries a GPU
    provider's failure on the CPU, a sixth of a one-row batch's time on a small model. None
    where there is no such entry point (another onnxruntime) or a GPU provider is in use."""
    inner = getattr(session, "_sess", None)
    if session.get_providers() != [CPU] or not callable(getattr(inner, "run", None)):
        return None
    return inner.run  # type: ignore[union-attr]


@functools.cache
def _load_cuda_libraries() -> None:
    """CUDA and cuDNN from pip's nvidia-* packages (onnxruntime-gpu[cuda,cudnn]), which the
    dynamic loader does not search; a no-op where they are on its path or torch loaded them."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


def _without_cuda(config: ModelConfig, quiet: bool = False) -> str:
    """The CUDA provider did not load: an error where the config names a GPU; with ``auto``,
    a warning and the CPU."""
    found = ", ".join(ort.get_available_providers())
    if config.device != "auto":
        raise ConfigError(f"{config.source}: key 'device': {config.device} needs ONNX Runtime's "
                          f"CUDA execution provider, which did not load (this onnxruntime has "
                          f"{found}); install onnxruntime-gpu with CUDA and cuDNN, or set "
                          "device: cpu")
    if not quiet:
        log.warning("model %s: a GPU is visible but ONNX Runtime's CUDA execution provider did "
                    "not load (providers: %s); running on the CPU", config.name, found)
    return "cpu"


def _specs(args: list, batched: bool, path: Path) -> tuple[TensorSpec, ...]:
    specs = []
    for arg in args:
        datatype = ONNX_TO_OIP.get(arg.type)
        if datatype is None:
            raise ConfigError(f"{path}: tensor '{arg.name}' has unsupported type {arg.type}")
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in arg.shape]
        if batched:
            if not dims:
                raise ConfigError(f"{path}: '{arg.name}' has no batch dimension but "
                                  "max_batch_size > 0")
            dims = dims[1:]
        specs.append(TensorSpec(arg.name, datatype, tuple(dims)))
    return tuple(specs)


def _reconcile(
    declared: tuple[TensorSpec, ...] | None,
    found: tuple[TensorSpec, ...],
    source: Path,
    key: str,
) -> tuple[TensorSpec, ...]:
    """The config's tensors when given (checked against the model), else the model's own."""
    if declared is None:
        return found
    by_name = {s.name: s for s in found}
    for spec in declared:
        actual = by_name.get(spec.name)
        if actual is None:
            raise ConfigError(f"{source}: key '{key}': the model has no tensor '{spec.name}'; "
                              f"it has {sorted(by_name)}")
        if actual.datatype != spec.datatype:
            raise ConfigError(f"{source}: key '{key}': '{spec.name}' is {actual.datatype} in "
                              f"the model, not {spec.datatype}")
    return declared
