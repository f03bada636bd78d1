"""Triton's config.pbtxt: every supported field, unsupported ones reported once, malformed files,
and the version policy choosing which version folders the repository scan serves.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from common.datatypes import ALL_DATATYPES
from common.model_config import (
    DEFAULT_MAX_QUEUE_SIZE,
    ConfigError,
    DynamicBatching,
    ModelConfig,
    TensorSpec,
    VersionPolicy,
    load_model_config,
)
from common.pbtxt import SUPPORTED, datatype, parse_pbtxt
from common.proto import model_config_pb2 as mc
from runtime.repository import scan

ROOT = Path(__file__).resolve().parents[2]
ONNX = ROOT / "models" / "digits" / "1" / "model.onnx"
TORCHSCRIPT = ROOT / "models" / "digits" / "2" / "model.pt"

FULL = """\
# Every field tensorgate honours, in Triton's own spelling.
name: "digits"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 64
default_model_filename: "digits.onnx"
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }
]
output [
  { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1, 10 ] },
  { name: "LABEL", data_type: TYPE_STRING, dims: [ 1 ] }
]
dynamic_batching {
  preferred_batch_size: [ 64, 32 ]
  max_queue_delay_microseconds: 500
  default_queue_policy {
    max_queue_size: 128
    default_timeout_microseconds: 20000
    allow_timeout_override: true
  }
}
instance_group [ { name: "cpus", count: 3, kind: KIND_CPU } ]
version_policy: { latest: { num_versions: 2 } }
"""


def parse(text: str, name: str = "m") -> tuple[ModelConfig, list[str]]:
    return parse_pbtxt(text, Path("/repo") / name / "config.pbtxt", name)


def config_of(text: str, name: str = "m") -> ModelConfig:
    config, unsupported = parse(text, name)
    assert unsupported == []
    return config


def test_every_supported_field_is_read() -> None:
    config, unsupported = parse(FULL, "digits")
    assert unsupported == []
    assert config == ModelConfig(
        name="digits",
        source=Path("/repo/digits/config.pbtxt"),
        max_batch_size=64,
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=500,
                                         preferred_batch_size=(32, 64), max_queue_size=128,
                                         default_timeout_microseconds=20000),
        instance_count=3,
        device="cpu",
        backend="onnx",
        inputs=(TensorSpec("INPUT0", "FP32", (64,)),),
        outputs=(TensorSpec("OUTPUT0", "FP32", (-1, 10)), TensorSpec("LABEL", "BYTES", (1,))),
        version_policy=VersionPolicy("latest", num_versions=2),
        model_filename="digits.onnx",
    )


def test_a_minimal_config_takes_triton_defaults() -> None:
    config = config_of('platform: "pytorch_libtorch"\n')
    assert config.backend == "torch" and config.max_batch_size == 0
    assert config.inputs is None and config.outputs is None and config.dynamic_batching is None
    assert (config.instance_count, config.device) == (1, "auto")
    assert config.version_policy == VersionPolicy("latest", num_versions=1)
    assert config.model_filename is None


def test_every_triton_datatype_maps_to_a_kserve_datatype() -> None:
    names = [n for n in mc.DataType.keys() if n != "TYPE_INVALID"]  # noqa: SIM118
    mapped = {n: datatype(mc.DataType.Value(n)) for n in names}
    assert set(mapped.values()) == set(ALL_DATATYPES)
    assert mapped["TYPE_STRING"] == "BYTES" and mapped["TYPE_BF16"] == "BF16"
    assert mapped["TYPE_UINT64"] == "UINT64" and mapped["TYPE_FP16"] == "FP16"


@pytest.mark.parametrize(("fields", "backend"), [
    ('platform: "onnxruntime_onnx"', "onnx"),
    ('backend: "onnxruntime"', "onnx"),
    ('platform: "pytorch_libtorch"', "torch"),
    ('backend: "pytorch"', "torch"),
    ('platform: "pytorch_libtorch" backend: "pytorch"', "torch"),
    ("", None),
])
def test_platform_and_backend(fields: str, backend: str | None) -> None:
    assert config_of(fields).backend == backend


@pytest.mark.parametrize(("group", "count", "device"), [
    ("{ count: 2, kind: KIND_GPU }", 2, "cuda:0"),
    ("{ count: 3, kind: KIND_GPU, gpus: [ 1 ] }", 3, "cuda:1"),
    ("{ count: 4, kind: KIND_CPU }", 4, "cpu"),
    ("{ count: 2 }", 2, "auto"),
    # Triton's default count: 2 for ONNX Runtime on the CPU, 1 otherwise.
    ("{ kind: KIND_CPU }", 2, "cpu"),
    ("{ kind: KIND_GPU }", 1, "cuda:0"),
    ("{ count: 1, kind: KIND_CPU }, { count: 2, kind: KIND_CPU }", 3, "cpu"),
])
def test_instance_groups(group: str, count: int, device: str) -> None:
    config = config_of(f'platform: "onnxruntime_onnx"\ninstance_group [ {group} ]\n')
    assert (config.instance_count, config.device) == (count, device)


def test_torch_on_the_cpu_defaults_to_one_instance() -> None:
    config = config_of('backend: "pytorch"\ninstance_group [ { kind: KIND_CPU } ]\n')
    assert config.instance_count == 1


def test_dynamic_batching_defaults_and_the_queue_bound() -> None:
    config = config_of("max_batch_size: 8\ndynamic_batching { }\n")
    assert config.dynamic_batching == DynamicBatching()
    # Triton's 0 means unbounded; tensorgate keeps its default bound instead.
    config = config_of("dynamic_batching { default_queue_policy { max_queue_size: 0 } }\n")
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.max_queue_size == DEFAULT_MAX_QUEUE_SIZE


def test_version_policies_are_read() -> None:
    assert config_of("version_policy: { all { } }").version_policy == VersionPolicy("all")
    assert config_of("version_policy { specific { versions: [ 3, 1, 3 ] } }").version_policy \
        == VersionPolicy("specific", versions=(1, 3))


# --------------------------------------------------------------------------- unsupported fields

UNSUPPORTED = """\
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "a", data_type: TYPE_FP32, dims: [ 3 ], reshape { shape: [ 1, 3 ] } },
  { name: "b", data_type: TYPE_FP32, dims: [ 3 ], reshape: { shape: [ 3, 1 ] }, optional: true }
]
optimization < priority: PRIORITY_MAX, cuda { busy_wait_events: true } >
dynamic_batching { priority_levels: 2, default_queue_policy { timeout_action: DELAY } }
instance_group [ { count: 1, kind: KIND_CPU, host_policy: "numa0" } ]
parameters { key: "intra_op_thread_count" value: { string_value: "4" } }
model_warmup [ { name: "zeros", batch_size: 1 } ]
batch_input [ { kind: BATCH_ELEMENT_COUNT, target_name: "N" } ];
model_metrics { metric_control [ { histogram_options { buckets: [ 0.5, 1 ] } } ] }
"""


def test_a_decoupled_model_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"model_transaction_policy.decoupled.*not supported"):
        parse('backend: "onnxruntime"\nmodel_transaction_policy { decoupled: true }\n')
    config, _ = parse('backend: "onnxruntime"\nmodel_transaction_policy { decoupled: false }\n')
    assert config.name == "m"


def test_unsupported_fields_are_listed_once_each() -> None:
    config, unsupported = parse(UNSUPPORTED)
    assert unsupported == [
        "batch_input", "dynamic_batching.default_queue_policy.timeout_action",
        "dynamic_batching.priority_levels", "input.optional", "input.reshape",
        "instance_group.host_policy", "model_metrics", "model_warmup",
        "optimization.cuda.busy_wait_events", "optimization.priority", "parameters",
    ]
    # What is supported around them still applies.
    assert config.max_batch_size == 8 and config.instance_count == 1 and config.device == "cpu"
    assert config.inputs is not None and [s.name for s in config.inputs] == ["a", "b"]


@pytest.mark.parametrize(("group", "reported"), [
    ("{ count: 1, kind: KIND_GPU, gpus: [ 0, 1 ] }", "instance_group.gpus (more than one GPU"),
    ("{ count: 1, kind: KIND_CPU }, { count: 1, kind: KIND_GPU }",
     "instance_group (groups on more than one device"),
    ("{ count: 1, kind: KIND_MODEL }", "instance_group.kind (KIND_MODEL)"),
    ("{ count: 1, kind: KIND_CPU, gpus: [ 0 ] }", "instance_group.gpus (on a group"),
])
def test_instance_groups_beyond_one_device_are_reported(group: str, reported: str) -> None:
    config, unsupported = parse(f"instance_group [ {group} ]\n")
    assert len(unsupported) == 1 and unsupported[0].startswith(reported)
    assert config.instance_count == 1


def test_a_field_name_as_a_value_is_only_a_value() -> None:
    # "optimization" here is a string value, not a field: nothing is reported.
    config, unsupported = parse(
        'input [ { name: "optimization", data_type: TYPE_FP32, dims: [ 1 ] } ]')
    assert config.inputs == (TensorSpec("optimization", "FP32", (1,)),) and unsupported == []


def _set(message: Message, field: FieldDescriptor) -> None:
    """Give `field` of `message` a value other than its default."""
    value_type = field.message_type
    if value_type is not None and value_type.GetOptions().map_entry:
        key = value_type.fields_by_name["key"]
        container = getattr(message, field.name)
        if value_type.fields_by_name["value"].message_type is not None:
            container[key.default_value].SetInParent()
        else:
            container["k"] = "v"
    elif value_type is not None:
        child = getattr(message, field.name).add() if field.is_repeated \
            else getattr(message, field.name)
        child.SetInParent()
    elif field.type == FieldDescriptor.TYPE_ENUM:
        value = field.enum_type.values[-1].number
        getattr(message, field.name).append(value) if field.is_repeated \
            else setattr(message, field.name, value)
    else:
        value = {FieldDescriptor.CPPTYPE_STRING: "x", FieldDescriptor.CPPTYPE_BOOL: True,
                 FieldDescriptor.CPPTYPE_DOUBLE: 0.5, FieldDescriptor.CPPTYPE_FLOAT: 0.5,
                 }.get(field.cpp_type, 3)
        getattr(message, field.name).append(value) if field.is_repeated \
            else setattr(message, field.name, value)


@pytest.mark.parametrize("field", [
    f for f in mc.ModelConfig.DESCRIPTOR.fields if f.name not in SUPPORTED
    and not any(s.startswith(f.name + ".") for s in SUPPORTED)], ids=lambda f: f.name)
def test_every_field_of_tritons_schema_that_is_not_read_is_reported(
        field: FieldDescriptor) -> None:
    message = mc.ModelConfig()
    _set(message, field)
    _, unsupported = parse(text_format.MessageToString(message))
    assert unsupported == [field.name]


@pytest.mark.parametrize("parent", ["input", "output", "instance_group"])
def test_every_nested_field_that_is_not_read_is_reported(parent: str) -> None:
    descriptor = mc.ModelConfig.DESCRIPTOR.fields_by_name[parent].message_type
    for field in descriptor.fields:
        if f"{parent}.{field.name}" in SUPPORTED:
            continue
        message = mc.ModelConfig()
        item = getattr(message, parent).add(name="x")
        _set(item, field)
        if parent != "instance_group":
            item.data_type, item.dims[:] = mc.TYPE_FP32, [1]
        _, unsupported = parse(text_format.MessageToString(message))
        assert unsupported == [f"{parent}.{field.name}"], field.name


def test_default_values_count_as_not_set() -> None:
    _, unsupported = parse('input [ { name: "a", data_type: TYPE_FP32, dims: [ 1 ], '
                           'optional: false, format: FORMAT_NONE } ]\nresponse_cache { }\n')
    assert unsupported == ["response_cache"]  # a message that is present is set, even empty


@pytest.mark.parametrize("scheduler", ["sequence_batching", "ensemble_scheduling"])
def test_another_scheduler_is_reported_and_two_are_an_error(scheduler: str) -> None:
    _, unsupported = parse(f"{scheduler} {{ }}\n")
    assert unsupported == [scheduler]
    with pytest.raises(ConfigError, match=rf'line 2, .*"{scheduler}".*"dynamic_batching"'
                                          '.*oneof "scheduling_choice"'):
        parse(f"dynamic_batching {{ }}\n{scheduler} {{ }}\n")


def _repo_with(tmp_path: Path, text: str, versions: tuple[int, ...] = (1,)) -> Path:
    model = tmp_path / "repo" / "m"
    for version in versions:
        (model / str(version)).mkdir(parents=True)
        shutil.copyfile(ONNX, model / str(version) / "model.onnx")
    (model / "config.pbtxt").write_text(text)
    return tmp_path / "repo"


def test_a_scan_logs_one_warning_naming_the_file_and_the_fields(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = _repo_with(tmp_path, UNSUPPORTED + "version_policy { all { } }\n", (1, 2, 3))
    with caplog.at_level(logging.WARNING, logger="tensorgate.config"):
        assert [s.version for s in scan(repo)] == [1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(repo / "m" / "config.pbtxt") in warnings[0]
    for field in ("model_metrics", "input.reshape", "parameters", "model_warmup"):
        assert warnings[0].count(field) == 1


def test_a_supported_config_logs_nothing(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    repo = _repo_with(tmp_path, FULL.replace('"digits"', '"m"').replace("digits.onnx",
                                                                         "model.onnx"))
    with caplog.at_level(logging.DEBUG, logger="tensorgate.config"):
        scan(repo)
    assert caplog.records == []


# --------------------------------------------------------------------------- malformed files


@pytest.mark.parametrize(("text", "line", "expected"), [
    ('name: "m"\nmax_batch_size: many\n', 2, "Couldn't parse integer: many"),
    ('name: "m"\nmax_batch: 4\n', 2, 'has no field named "max_batch"'),
    ("input [ {\n  name: \"a\"\n  data_type: TYPE_FLOAT\n} ]\n", 3,
     'has no value named TYPE_FLOAT'),
    ('input [ { name: "a" dims: [ 1 ]\n', 1, 'Expected "}"'),  # at the end of the text
    ('dynamic_batching { max_queue_delay: 5 }\n', 1, 'has no field named "max_queue_delay"'),
    ('name: "m"\nname: "n"\n', 2, 'should not have multiple "name" fields'),
    # A section tensorgate does not run is parsed all the same: its faults are errors too.
    ('sequence_batching {\n  direct { }\n}\n\nmax_batch_size: -\n', 5, "Couldn't parse"),
    ('max_batch_size: 1\nsequence_batching {\n  direct { }\n', 3, 'Expected "}"'),
    ('sequence_batching {\n  direct { max_queue: 1 }\n}\n', 2, 'no field named "max_queue"'),
])
def test_malformed_text_names_file_line_and_what_was_expected(
        tmp_path: Path, text: str, line: int, expected: str) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_model_config(path, "m")
    message = str(caught.value)
    assert message.startswith(f"{path}: line {line}, column ")
    assert expected in message and "expected Triton's ModelConfig" in message


@pytest.mark.parametrize(("text", "message"), [
    ('name: "other"', "field 'name': expected the model's folder name 'm', got 'other'"),
    ('platform: "tensorrt_plan"', "field 'platform': expected onnxruntime_onnx | pytorch_libtorch"),
    ('backend: "python"', "field 'backend': expected onnxruntime | pytorch, got 'python'"),
    ('platform: "onnxruntime_onnx" backend: "pytorch"', "field 'backend': expected the backend"),
    ("max_batch_size: -1", "field 'max_batch_size': expected an integer >= 0, got -1"),
    ('input { name: "a" dims: [ 1 ] }', "field 'input[0].data_type': expected TYPE_FP32"),
    ('output { data_type: TYPE_FP32 dims: [ 1 ] }', "field 'output[0].name'"),
    ('input { name: "a" data_type: TYPE_FP32 }', "field 'input[0].dims': expected at least one"),
    ('input { name: "a" data_type: TYPE_FP32 dims: [ 0 ] }', "field 'input[0].dims'"),
    ("dynamic_batching { preferred_batch_size: [ 0 ] }",
     "field 'dynamic_batching.preferred_batch_size': expected integers >= 1"),
    ("instance_group { count: -2 }", "field 'instance_group[0].count': expected an integer >= 1"),
    ("version_policy { latest { } }", "field 'version_policy.latest.num_versions'"),
    ("version_policy { specific { } }", "field 'version_policy.specific.versions'"),
    ('default_model_filename: "../model.onnx"', "field 'default_model_filename'"),
])
def test_meaningless_values_name_the_file_and_the_field(tmp_path: Path, text: str,
                                                         message: str) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_model_config(path, "m")
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


# --------------------------------------------------------------------------- version policy


@pytest.mark.parametrize(("policy", "served"), [
    ("", [3]),  # Triton's default: the latest one
    ("version_policy: { all { } }", [1, 2, 3]),
    ("version_policy: { latest: { num_versions: 2 } }", [2, 3]),
    ("version_policy: { latest: { num_versions: 9 } }", [1, 2, 3]),
    ("version_policy: { specific: { versions: [ 3, 1 ] } }", [1, 3]),
])
def test_the_pbtxt_policy_picks_the_versions_scanned(tmp_path: Path, policy: str,
                                                      served: list[int]) -> None:
    repo = _repo_with(tmp_path, f'platform: "onnxruntime_onnx"\n{policy}\n', (1, 2, 3))
    sources = scan(repo)
    assert [s.version for s in sources] == served
    assert all(s.artifact == repo / "m" / str(s.version) / "model.onnx" for s in sources)


def test_a_specific_version_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    repo = _repo_with(tmp_path, "version_policy { specific { versions: [ 2, 4, 7 ] } }",
                      (1, 2, 3))
    with pytest.raises(ConfigError) as caught:
        scan(repo)
    message = str(caught.value)
    assert str(repo / "m" / "config.pbtxt") in message
    assert "version(s) 4, 7 with no folder; found 1, 2, 3" in message


@pytest.mark.parametrize(("policy", "served"), [
    ("", [1, 2, 3]),  # config.yaml without a policy serves every version, as it always has
    ("version_policy: {all: {}}\n", [1, 2, 3]),
    ("version_policy: {latest: {num_versions: 1}}\n", [3]),
    ("version_policy: {specific: {versions: [2]}}\n", [2]),
])
def test_the_yaml_policy_picks_the_versions_scanned(tmp_path: Path, policy: str,
                                                     served: list[int]) -> None:
    repo = _repo_with(tmp_path, "", (1, 2, 3))
    (repo / "m" / "config.pbtxt").unlink()
    (repo / "m" / "config.yaml").write_text(policy)
    assert [s.version for s in scan(repo)] == served


@pytest.mark.parametrize(("policy", "message"), [
    ("version_policy: latest\n", "key 'version_policy': expected {all: {}} | {latest"),
    ("version_policy: {latest: {}}\n", "key 'version_policy.latest.num_versions': expected an"),
    ("version_policy: {latest: {count: 2}}\n", "unknown key 'version_policy.latest.count'"),
    ("version_policy: {specific: {versions: []}}\n", "key 'version_policy.specific.versions'"),
    ("version_policy: {all: {}, latest: {num_versions: 1}}\n", "key 'version_policy'"),
])
def test_yaml_policy_mistakes(tmp_path: Path, policy: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(policy)
    with pytest.raises(ConfigError) as caught:
        load_model_config(path, "m")
    assert str(path) in str(caught.value) and message in str(caught.value)


# --------------------------------------------------------------------------- the repository


def test_config_yaml_wins_over_config_pbtxt_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = _repo_with(tmp_path, "max_batch_size: 8\nthis is not read\n", (1, 2))
    (repo / "m" / "config.yaml").write_text("max_batch_size: 4\n")
    with caplog.at_level(logging.WARNING, logger="tensorgate.config"):
        sources = scan(repo)
    assert [s.version for s in sources] == [1, 2]  # config.yaml's default policy: all
    assert sources[0].config.max_batch_size == 4
    assert sources[0].config.source == repo / "m" / "config.yaml"
    assert [r.getMessage() for r in caplog.records] == [
        f"{repo / 'm'}: both config.yaml and config.pbtxt are present; using config.yaml, "
        "config.pbtxt is not read"]


def test_default_model_filename_picks_the_artifact(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "t" / "1").mkdir(parents=True)
    shutil.copyfile(TORCHSCRIPT, repo / "t" / "1" / "digits.pt")
    (repo / "t" / "config.pbtxt").write_text('default_model_filename: "digits.pt"\n')
    [source] = scan(repo)
    assert (source.backend, source.artifact) == ("torch", repo / "t" / "1" / "digits.pt")

    (repo / "t" / "config.pbtxt").write_text('default_model_filename: "weights.bin"\n')
    (repo / "t" / "1" / "weights.bin").write_bytes(ONNX.read_bytes())
    with pytest.raises(ConfigError, match=r"cannot tell the backend of weights\.bin"):
        scan(repo)
    (repo / "t" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n'
                                             'default_model_filename: "weights.bin"\n')
    [source] = scan(repo)
    assert (source.backend, source.artifact.name) == ("onnx", "weights.bin")

    (repo / "t" / "config.pbtxt").write_text('default_model_filename: "gone.onnx"\n')
    with pytest.raises(ConfigError, match=r"no model file 'gone\.onnx'"):
        scan(repo)


def test_platform_selects_among_artifacts(tmp_path: Path) -> None:
    repo = _repo_with(tmp_path, 'platform: "pytorch_libtorch"\n')
    with pytest.raises(ConfigError,
                       match=r"no model file found \(expected model\.pt or model\.pt2\)"):
        scan(repo)
    shutil.copyfile(TORCHSCRIPT, repo / "m" / "1" / "model.pt")
    [source] = scan(repo)
    assert (source.backend, source.artifact.name) == ("torch", "model.pt")
