"""Checks shared by both config readers: `precision` and the GPU execution accelerators.

`config.yaml` and `config.pbtxt` spell them differently; the values allowed are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.model_spec import Accelerator, ConfigError, key_error

PRECISIONS = ("fp32", "fp16", "bf16")
ACCELERATORS = ("tensorrt",)
#: TensorRT's parameters by Triton's ONNX Runtime backend names, with what each allows.
TENSORRT_PARAMETERS = {
    "precision_mode": "FP32 | FP16",
    "max_workspace_size_bytes": "an integer >= 1",
    "trt_engine_cache_enable": "true | false",
}
_BOOLS = {"true": "true", "1": "true", "false": "false", "0": "false"}


def check_precision(value: Any, path: Path, key: str = "precision") -> str:
    if value not in PRECISIONS:
        raise key_error(path, key, " | ".join(PRECISIONS), value)
    return str(value)


def accelerator(name: Any, parameters: Mapping[Any, Any], path: Path, key: str) -> Accelerator:
    """One GPU accelerator, its name and each parameter checked; values kept as Triton's text."""
    if name not in ACCELERATORS:
        raise key_error(path, f"{key}.name", " | ".join(ACCELERATORS), name)
    checked = []
    for param, raw in parameters.items():
        where = f"{key}.parameters.{param}"
        if param == "trt_engine_cache_path":
            # NOTE: engines are cached in a folder tensorgate owns; a config never names a path
            # the runtime would write to.
            raise ConfigError(f"{path}: key '{where}': not supported: tensorgate caches TensorRT "
                              "engines in its own cache folder (set trt_engine_cache_enable "
                              "to turn the cache off)")
        allowed = TENSORRT_PARAMETERS.get(param)
        if allowed is None:
            raise ConfigError(f"{path}: unknown key '{where}'; allowed keys: "
                              + ", ".join(f"{key}.parameters.{p}" for p in TENSORRT_PARAMETERS))
        checked.append((param, _value(param, raw, path, where, allowed)))
    return Accelerator(str(name), tuple(sorted(checked)))


def _value(param: str, raw: Any, path: Path, where: str, allowed: str) -> str:
    text = str(raw).lower() if isinstance(raw, bool) else str(raw)
    if param == "precision_mode" and text.upper() in ("FP32", "FP16"):
        return text.upper()
    if param == "max_workspace_size_bytes" and text.isdigit() and int(text) >= 1:
        return text
    if param == "trt_engine_cache_enable" and text.lower() in _BOOLS:
        return _BOOLS[text.lower()]
    raise key_error(path, where, allowed, raw)
