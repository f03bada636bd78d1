"""A model's configuration: `config.yaml` parsed and checked key by key into a typed ModelConfig.

Triton's `config.pbtxt` is read by common.pbtxt into the same types (common.model_spec).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import yaml

from common.datatypes import ALL_DATATYPES
from common.model_spec import (
    DEFAULT_MAX_QUEUE_SIZE,
    SERVE_ALL,
    TRITON_DEFAULT_POLICY,
    ConfigError,
    DynamicBatching,
    ModelConfig,
    Optimization,
    TensorSpec,
    VersionPolicy,
    key_error,
    read_labels,
)
from common.optimization import PRECISIONS, accelerator, check_precision
from common.pbtxt import load_pbtxt

# The types are imported from here across the code base; they live in common.model_spec.
__all__ = [
    "DEFAULT_MAX_QUEUE_SIZE", "SERVE_ALL", "TRITON_DEFAULT_POLICY", "ConfigError",
    "DynamicBatching", "ModelConfig", "TensorSpec", "VersionPolicy", "load_model_config",
    "read_labels",
]
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_TOP_KEYS = {
    "name": "the model's name (must match its folder)",
    "backend": "onnx | torch",
    "max_batch_size": "an integer >= 0 (0: the model takes no batch dimension)",
    "dynamic_batching": "a mapping",
    "instance_count": "an integer >= 1",
    "device": "auto | cpu | cuda:N",
    "inputs": "a list of {name, datatype, shape}",
    "outputs": "a list of {name, datatype, shape}",
    "version_policy": "{all: {}} | {latest: {num_versions: N}} | {specific: {versions: [...]}}",
    "labels": "a mapping of output name to a labels file beside the config or a list of labels",
    "precision": " | ".join(PRECISIONS),
    "optimization": "a mapping: execution_accelerators, cuda",
}
_OPTIMIZATION_KEYS = {
    "execution_accelerators": "{gpu: [{name: tensorrt, parameters: {...}}]}",
    "cuda": "{graphs: true | false, channels_last: true | false}",
}
_CUDA_KEYS = {"graphs": "true | false", "channels_last": "true | false"}
_BATCHING_KEYS = {
    "max_queue_delay_microseconds": "an integer >= 0",
    "preferred_batch_size": "a list of integers >= 1",
    "max_queue_size": "an integer >= 0 (0: the default bound)",
    "default_timeout_microseconds": "an integer >= 0 (0: no timeout)",
}


def load_model_config(path: Path, name: str) -> ModelConfig:
    """Read `path` (which may be absent: every key has a default) for the model `name`.

    A `.pbtxt` path is read as Triton's model configuration, anything else as YAML.
    """
    if path.suffix == ".pbtxt":
        return load_pbtxt(path, name)
    raw: Any = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") \
                from None
        except RecursionError:
            raise ConfigError(f"{path}: nested too deeply to be a model config") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return _parse(raw, path, name)


def _parse(raw: dict[str, Any], path: Path, name: str) -> ModelConfig:
    _check_keys(raw, _TOP_KEYS, path, "")
    if raw.get("name", name) != name:
        _fail(path, "name", _TOP_KEYS["name"], raw["name"])
    backend = raw.get("backend")
    if backend not in (None, "onnx", "torch"):
        _fail(path, "backend", _TOP_KEYS["backend"], backend)
    device = raw.get("device", "auto")
    if not isinstance(device, str) or not _DEVICE.match(device):
        _fail(path, "device", _TOP_KEYS["device"], device)
    return ModelConfig(
        name=name,
        source=path,
        max_batch_size=_int(raw, "max_batch_size", 0, 0, path),
        dynamic_batching=_batching(raw.get("dynamic_batching"), path),
        instance_count=_int(raw, "instance_count", 1, 1, path),
        device=device,
        backend=backend,
        inputs=_tensors(raw.get("inputs"), path, "inputs"),
        outputs=_tensors(raw.get("outputs"), path, "outputs"),
        version_policy=_version_policy(raw.get("version_policy"), path),
        labels=_labels(raw.get("labels"), path),
        precision=check_precision(raw.get("precision", "fp32"), path),
        optimization=_optimization(raw.get("optimization"), path),
    )


def _optimization(raw: Any, path: Path) -> Optimization:
    """Triton's `optimization` in YAML: `execution_accelerators.gpu` and `cuda`."""
    if raw is None:
        return Optimization()
    _mapping(raw, path, "optimization", _TOP_KEYS["optimization"])
    _check_keys(raw, _OPTIMIZATION_KEYS, path, "optimization.")
    accelerators = _mapping(raw.get("execution_accelerators", {}), path,
                            "optimization.execution_accelerators",
                            _OPTIMIZATION_KEYS["execution_accelerators"])
    _check_keys(accelerators, {"gpu": "a list of accelerators"}, path,
                "optimization.execution_accelerators.")
    gpu = accelerators.get("gpu", [])
    if not isinstance(gpu, list):
        _fail(path, "optimization.execution_accelerators.gpu", "a list of accelerators", gpu)
    found = []
    for i, item in enumerate(gpu):
        key = f"optimization.execution_accelerators.gpu[{i}]"
        _mapping(item, path, key, "a mapping with keys name, parameters")
        _check_keys(item, {"name": "", "parameters": ""}, path, key + ".")
        parameters = _mapping(item.get("parameters", {}), path, key + ".parameters",
                              "a mapping of parameter names to values")
        found.append(accelerator(item.get("name"), parameters, path, key))
    cuda = _mapping(raw.get("cuda", {}), path, "optimization.cuda", _OPTIMIZATION_KEYS["cuda"])
    _check_keys(cuda, _CUDA_KEYS, path, "optimization.cuda.")
    for key in ("graphs", "channels_last"):
        if key in cuda and not isinstance(cuda[key], bool):
            _fail(path, f"optimization.cuda.{key}", _CUDA_KEYS[key], cuda[key])
    return Optimization(tuple(found), cuda.get("graphs", False), cuda.get("channels_last"))


def _mapping(raw: Any, path: Path, key: str, allowed: str) -> dict:
    if not isinstance(raw, dict):
        _fail(path, key, allowed, raw)
    return raw


def _labels(raw: Any, path: Path) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`labels: {output: labels.txt}` (a file beside the config) or `{output: [a, b, ...]}`."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        _fail(path, "labels", _TOP_KEYS["labels"], raw)
    found = []
    for output, value in raw.items():
        key = f"labels.{output}"
        if not isinstance(output, str) or not output:
            _fail(path, "labels", "output names as keys", output)
        if isinstance(value, str):
            found.append((output, read_labels(path.parent, value, path, key)))
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            found.append((output, tuple(value)))
        else:
            _fail(path, key, "a file name or a non-empty list of strings", value)
    return tuple(found)


def _version_policy(raw: Any, path: Path) -> VersionPolicy:
    """The YAML spelling of Triton's version_policy: one key, `all`, `latest` or `specific`."""
    if raw is None:
        return SERVE_ALL
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in (
            "all", "latest", "specific"):
        _fail(path, "version_policy", _TOP_KEYS["version_policy"], raw)
    kind, body = next(iter(raw.items()))
    body = {} if body is None else body
    if not isinstance(body, dict):
        _fail(path, f"version_policy.{kind}", "a mapping", body)
    allowed = {"all": {}, "latest": {"num_versions": "an integer >= 1"},
               "specific": {"versions": "a non-empty list of version numbers"}}[kind]
    _check_keys(body, allowed, path, f"version_policy.{kind}.")
    if kind == "latest":
        return VersionPolicy("latest", num_versions=_int(
            body, "num_versions", 0, 1, path, "version_policy.latest."))
    if kind == "specific":
        versions = body.get("versions")
        if not isinstance(versions, list) or not versions or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in versions):
            _fail(path, "version_policy.specific.versions",
                  "a non-empty list of integers >= 1", versions)
        return VersionPolicy("specific", versions=tuple(sorted(set(versions))))
    return SERVE_ALL


def _batching(raw: Any, path: Path) -> DynamicBatching | None:
    if raw is None:
        return None
    if raw == {} or raw is True:
        return DynamicBatching()
    if not isinstance(raw, dict):
        _fail(path, "dynamic_batching", _TOP_KEYS["dynamic_batching"], raw)
    _check_keys(raw, _BATCHING_KEYS, path, "dynamic_batching.")
    preferred = raw.get("preferred_batch_size", [])
    if not isinstance(preferred, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in preferred
    ):
        _fail(path, "dynamic_batching.preferred_batch_size", "a list of integers >= 1", preferred)
    queue = _int(raw, "max_queue_size", 0, 0, path, "dynamic_batching.")
    return DynamicBatching(
        max_queue_delay_microseconds=_int(
            raw, "max_queue_delay_microseconds", 0, 0, path, "dynamic_batching."
        ),
        preferred_batch_size=tuple(sorted(preferred)),
        max_queue_size=queue or DEFAULT_MAX_QUEUE_SIZE,
        default_timeout_microseconds=_int(
            raw, "default_timeout_microseconds", 0, 0, path, "dynamic_batching."
        ),
    )


def _tensors(raw: Any, path: Path, key: str) -> tuple[TensorSpec, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        _fail(path, key, _TOP_KEYS[key], raw)
    specs = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "datatype", "shape"}:
            _fail(path, where, "a mapping with keys name, datatype, shape", item)
        if not isinstance(item.get("name"), str) or not item["name"]:
            _fail(path, f"{where}.name", "a non-empty string", item.get("name"))
        if item.get("datatype") not in ALL_DATATYPES:
            _fail(path, f"{where}.datatype", " | ".join(ALL_DATATYPES), item.get("datatype"))
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1) for d in shape
        ):
            _fail(path, f"{where}.shape", "a list of dimensions, each >= 1 or -1", shape)
        specs.append(TensorSpec(item["name"], item["datatype"], tuple(shape)))
    return tuple(specs)


def _int(raw: dict, key: str, default: int, low: int, path: Path, prefix: str = "") -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        _fail(path, prefix + key, f"an integer >= {low}", value)
    return value


def _check_keys(raw: dict, allowed: dict[str, str], path: Path, prefix: str) -> None:
    for key in raw:
        if key not in allowed:
            known = ", ".join(prefix + k for k in allowed)
            raise ConfigError(f"{path}: unknown key '{prefix}{key}'; allowed keys: {known}")


def _fail(path: Path, key: str, allowed: str, got: Any) -> NoReturn:
    raise key_error(path, key, allowed, got)
