"""ONNX Runtime's session inputs beyond the file: fp16 conversion at load, and the providers
(TensorRT before CUDA where the config asks for it and its libraries load)."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
from pathlib import Path

import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from common.model_config import ConfigError, ModelConfig
from common.model_spec import Accelerator

log = logging.getLogger("tensorgate.runtime")
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"
Provider = str | tuple[str, dict]


def model_source(path: Path, config: ModelConfig) -> str | bytes:
    """What the session loads: the file, or its fp16 conversion (`precision: fp16`)."""
    if config.precision == "fp32":
        return str(path)
    if config.precision != "fp16":
        raise ConfigError(f"{config.source}: key 'precision': model {config.name} is an ONNX "
                          f"model, which runs in fp32 or fp16 (no converter to "
                          f"{config.precision} ships with ONNX Runtime); use precision: fp16")
    info = path.stat()
    return _fp16(str(path), info.st_ino, info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _fp16(path: str, inode: int, size: int, mtime_ns: int) -> bytes:
    """The model in float16, its inputs and outputs kept as declared (keep_io_types): converted
    once per artifact, not once per instance."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(path)
    return bytes(convert_float_to_float16(model, keep_io_types=True).SerializeToString())


def session(source: str | bytes, options: ort.SessionOptions, providers: list[Provider],
            config: ModelConfig, device: str) -> ort.InferenceSession:
    """The session; a model the providers cannot run (no kernel for a converted node, …) is a
    load error naming the model, its precision and device."""
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except (ort_state.Fail, ort_state.NotImplemented, ort_state.InvalidGraph) as exc:
        if config.precision != "fp32":
            raise ConfigError(f"{config.source}: key 'precision': model {config.name} does not "
                              f"run in {config.precision} on device {device}: {exc}; use "
                              "precision: fp32") from None
        if config.optimization.cuda_graphs and device.startswith("cuda"):
            raise ConfigError(f"{config.source}: key 'optimization.cuda.graphs': ONNX Runtime "
                              f"cannot capture model {config.name} in CUDA graphs (every node "
                              f"must run on its CUDA provider): {exc}; turn graphs off") from None
        raise


def tensorrt_options(config: ModelConfig, artifact: Path, device_id: int) -> dict[str, object]:
    """TensorRT's provider options from Triton's accelerator parameters; engines are cached in
    tensorgate's own folder, one per model and artifact."""
    trt = _tensorrt(config)
    assert trt is not None
    options: dict[str, object] = {
        "device_id": device_id,
        "trt_fp16_enable": trt.get("precision_mode", "FP32") == "FP16",
    }
    if "max_workspace_size_bytes" in dict(trt.parameters):
        options["trt_max_workspace_size"] = int(trt.get("max_workspace_size_bytes", "0"))
    if trt.get("trt_engine_cache_enable", "true") == "true":
        folder = engine_cache(config, artifact)
        folder.mkdir(parents=True, exist_ok=True)
        options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder)}
    if config.optimization.cuda_graphs:
        options["trt_cuda_graph_enable"] = True
    return options


def engine_cache(config: ModelConfig, artifact: Path) -> Path:
    """`$XDG_CACHE_HOME/tensorgate/tensorrt/<model>/<artifact digest>`: a replaced artifact
    never meets an engine built for the old one. The model name passed the naming rule."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    info = artifact.stat()
    key = f"{artifact.resolve()}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"
    return root / "tensorgate" / "tensorrt" / config.name / hashlib.sha256(
        key.encode()).hexdigest()[:16]


def wants_tensorrt(config: ModelConfig) -> bool:
    return _tensorrt(config) is not None


def _tensorrt(config: ModelConfig) -> Accelerator | None:
    return next((a for a in config.optimization.gpu_accelerators if a.name == "tensorrt"), None)


@functools.cache
def tensorrt_loads() -> str | None:
    """None where ONNX Runtime's TensorRT provider library and TensorRT's own load in this
    process, else why not. ONNX Runtime lists the provider even where they do not, and asking
    for it there prints an error and retries without it."""
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    if not library.exists():
        return "this onnxruntime has no TensorRT provider"
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return f"its libraries do not load ({exc})"
    return None


def warn_fallback(config: ModelConfig, reason: str, runs_on: str) -> None:
    log.warning("model %s: optimization.execution_accelerators asks for TensorRT, which is not "
                "used: %s; it runs on %s", config.name, reason, runs_on)
