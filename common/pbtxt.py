"""Triton's `config.pbtxt`: protobuf text parsed against Triton's model_config.proto.

Fields tensorgate cannot honour are found by walking the parsed message, and logged once per load.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from google.protobuf import text_format
from google.protobuf.message import Message

from common.model_spec import (
    DEFAULT_MAX_QUEUE_SIZE,
    TRITON_DEFAULT_POLICY,
    ConfigError,
    DynamicBatching,
    ModelConfig,
    Optimization,
    TensorSpec,
    VersionPolicy,
    read_labels,
)
from common.optimization import accelerator
from common.proto import model_config_pb2 as mc

log = logging.getLogger("tensorgate.config")

PLATFORMS = {"onnxruntime_onnx": "onnx", "pytorch_libtorch": "torch"}
BACKENDS = {"onnxruntime": "onnx", "pytorch": "torch"}
_KINDS = {mc.ModelInstanceGroup.KIND_AUTO: "auto", mc.ModelInstanceGroup.KIND_CPU: "cpu",
          mc.ModelInstanceGroup.KIND_GPU: "cuda:0"}

# Every field path (repeated fields without an index) that changes what tensorgate does.
# `instance_group.name` is only a label and `allow_timeout_override` is what tensorgate always
# does (a request's own deadline is honoured), so neither is worth a warning.
SUPPORTED = frozenset({
    "name", "platform", "backend", "max_batch_size", "default_model_filename",
    "input.name", "input.data_type", "input.dims",
    "output.name", "output.data_type", "output.dims", "output.label_filename",
    "dynamic_batching.preferred_batch_size", "dynamic_batching.max_queue_delay_microseconds",
    "dynamic_batching.default_queue_policy.max_queue_size",
    "dynamic_batching.default_queue_policy.default_timeout_microseconds",
    "dynamic_batching.default_queue_policy.allow_timeout_override",
    "instance_group.name", "instance_group.count", "instance_group.kind", "instance_group.gpus",
    "version_policy.latest.num_versions", "version_policy.all",
    "version_policy.specific.versions",
    "optimization.execution_accelerators.gpu_execution_accelerator.name",
    "optimization.execution_accelerators.gpu_execution_accelerator.parameters",
    "optimization.cuda.graphs",
})
# text_format prefixes its messages with "line:column : "; ours names them in words instead.
_LOCATION = re.compile(r"^\d+:\d+ : ")


def load_pbtxt(path: Path, name: str) -> ModelConfig:
    """Read Triton's config.pbtxt at `path` for the model `name`; unsupported fields are logged."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    config, unsupported = parse_pbtxt(text, path, name)
    if unsupported:
        log.warning("%s: fields tensorgate does not support, ignored: %s", path,
                    ", ".join(unsupported))
    return config


def parse_pbtxt(text: str, path: Path, name: str) -> tuple[ModelConfig, list[str]]:
    """The ModelConfig `text` describes, and the sorted paths of the fields it ignores."""
    message = mc.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        detail = _LOCATION.sub("", str(exc))
        raise ConfigError(f"{path}: line {exc.GetLine()}, column {exc.GetColumn()}: {detail} "
                          "(expected Triton's ModelConfig in protobuf text format)") from None
    unsupported = set(unsupported_fields(message))
    return to_model_config(message, path, name, unsupported), sorted(unsupported)


def unsupported_fields(message: Message, prefix: str = "") -> list[str]:
    """Paths of the set fields (non-default values) that SUPPORTED does not list."""
    found = []
    for field, value in message.ListFields():
        path = prefix + field.name
        if path in SUPPORTED:
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if field.message_type is None or is_map or not any(
                s.startswith(path + ".") for s in SUPPORTED):
            found.append(path)
            continue
        for item in (value if field.is_repeated else [value]):
            found.extend(unsupported_fields(item, path + "."))
    return sorted(set(found))


def to_model_config(message: mc.ModelConfig, path: Path, name: str,
                    unsupported: set[str]) -> ModelConfig:
    """Map a parsed Triton ModelConfig onto ours; faults name the file and the field."""
    if message.name and message.name != name:
        _fail(path, "name", f"the model's folder name {name!r}", message.name)
    if message.max_batch_size < 0:
        _fail(path, "max_batch_size", "an integer >= 0", message.max_batch_size)
    if message.model_transaction_policy.decoupled:
        _fail(path, "model_transaction_policy.decoupled",
              "false: tensorgate answers each request once (decoupled models are not supported)",
              True)
    filename = message.default_model_filename
    if filename and (Path(filename).name != filename or filename in (".", "..")):
        _fail(path, "default_model_filename", "a file name inside the version folder", filename)
    backend = _backend(message, path)
    count, device = _instances(message, path, backend, unsupported)
    return ModelConfig(
        name=name,
        source=path,
        max_batch_size=message.max_batch_size,
        dynamic_batching=_batching(message, path),
        instance_count=count,
        device=device,
        backend=backend,
        inputs=_tensors(message.input, path, "input"),
        outputs=_tensors(message.output, path, "output"),
        version_policy=_version_policy(message, path),
        model_filename=filename or None,
        labels=tuple((item.name, read_labels(path.parent, item.label_filename, path,
                                             f"output[{i}].label_filename"))
                     for i, item in enumerate(message.output) if item.label_filename),
        optimization=_optimization(message, path),
    )


def _optimization(message: mc.ModelConfig, path: Path) -> Optimization:
    """TensorRT through `execution_accelerators` and `cuda.graphs`; the rest is reported."""
    policy = message.optimization
    found = tuple(
        accelerator(item.name, dict(item.parameters), path,
                    f"optimization.execution_accelerators.gpu_execution_accelerator[{i}]")
        for i, item in enumerate(policy.execution_accelerators.gpu_execution_accelerator))
    return Optimization(found, policy.cuda.graphs)


def _backend(message: mc.ModelConfig, path: Path) -> str | None:
    """'onnx', 'torch', or None (then the artifact in each version folder decides)."""
    by_platform = by_backend = None
    if message.platform:
        by_platform = PLATFORMS.get(message.platform)
        if by_platform is None:
            _fail(path, "platform", " | ".join(PLATFORMS), message.platform)
    if message.backend:
        by_backend = BACKENDS.get(message.backend)
        if by_backend is None:
            _fail(path, "backend", " | ".join(BACKENDS), message.backend)
    if by_platform and by_backend and by_platform != by_backend:
        _fail(path, "backend", f"the backend of platform {message.platform!r}", message.backend)
    return by_platform or by_backend


def _instances(message: mc.ModelConfig, path: Path, backend: str | None,
               unsupported: set[str]) -> tuple[int, str]:
    """Instance count and device: the first group's device, with the counts of its groups added."""
    if not message.instance_group:
        return 1, "auto"
    placed = []
    for i, group in enumerate(message.instance_group):
        if group.count < 0:
            _fail(path, f"instance_group[{i}].count", "an integer >= 1", group.count)
        device = _KINDS.get(group.kind)
        if device is None:
            unsupported.add("instance_group.kind (KIND_MODEL)")
            device = "auto"
        if group.gpus and group.kind in (mc.ModelInstanceGroup.KIND_GPU,
                                         mc.ModelInstanceGroup.KIND_AUTO):
            device = f"cuda:{group.gpus[0]}"
            if len(group.gpus) > 1:
                unsupported.add("instance_group.gpus (more than one GPU: the first is used)")
        elif group.gpus:
            unsupported.add("instance_group.gpus (on a group that is not KIND_GPU)")
        # NOTE: Triton's default count: 2 for ONNX Runtime on the CPU, otherwise 1.
        default = 2 if group.kind == mc.ModelInstanceGroup.KIND_CPU and backend == "onnx" else 1
        placed.append((group.count or default, device))
    devices = {d for _, d in placed}
    if len(devices) > 1:
        unsupported.add("instance_group (groups on more than one device: the first one's is used)")
    first = placed[0][1]
    return sum(c for c, d in placed if d == first), first


def _batching(message: mc.ModelConfig, path: Path) -> DynamicBatching | None:
    if message.WhichOneof("scheduling_choice") != "dynamic_batching":
        return None
    batching = message.dynamic_batching
    preferred = list(batching.preferred_batch_size)
    if any(size < 1 for size in preferred):
        _fail(path, "dynamic_batching.preferred_batch_size", "integers >= 1", preferred)
    policy = batching.default_queue_policy
    return DynamicBatching(
        max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
        preferred_batch_size=tuple(sorted(preferred)),
        # NOTE: 0 is unbounded in Triton; tensorgate never queues without a bound.
        max_queue_size=policy.max_queue_size or DEFAULT_MAX_QUEUE_SIZE,
        default_timeout_microseconds=policy.default_timeout_microseconds,
    )


def _tensors(items: Sequence[mc.ModelInput | mc.ModelOutput], path: Path,
             key: str) -> tuple[TensorSpec, ...] | None:
    if not items:
        return None  # ONNX models describe themselves; TorchScript ones fail at load
    specs = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not item.name:
            _fail(path, f"{where}.name", "a non-empty string", item.name)
        if item.data_type == mc.TYPE_INVALID:
            _fail(path, f"{where}.data_type", "TYPE_FP32, TYPE_INT64, ... (see DataType)",
                  "TYPE_INVALID")
        dims = tuple(item.dims)
        if not dims or not all(d >= 1 or d == -1 for d in dims):
            _fail(path, f"{where}.dims", "at least one dimension, each >= 1 or -1", list(dims))
        specs.append(TensorSpec(item.name, datatype(item.data_type), dims))
    return tuple(specs)


def datatype(value: int) -> str:
    """A DataType enum value as a KServe datatype: TYPE_FP32 → FP32, TYPE_STRING → BYTES."""
    enum_name = mc.DataType.Name(value)
    return "BYTES" if enum_name == "TYPE_STRING" else enum_name.removeprefix("TYPE_")


def _version_policy(message: mc.ModelConfig, path: Path) -> VersionPolicy:
    policy = message.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "latest":
        if policy.latest.num_versions < 1:
            _fail(path, "version_policy.latest.num_versions", "an integer >= 1",
                  policy.latest.num_versions)
        return VersionPolicy("latest", num_versions=policy.latest.num_versions)
    if choice == "specific":
        versions = list(policy.specific.versions)
        if not versions or any(v < 1 for v in versions):
            _fail(path, "version_policy.specific.versions", "a non-empty list of integers >= 1",
                  versions)
        return VersionPolicy("specific", versions=tuple(sorted(set(versions))))
    return TRITON_DEFAULT_POLICY


def _fail(path: Path, key: str, allowed: str, got: object) -> NoReturn:
    raise ConfigError(f"{path}: field '{key}': expected {allowed}, got {got!r}")
