"""The generated protobuf modules: fresh against protos/*.proto, and wire-compatible with Triton.

Freshness: protos/generate.py is run into a temporary directory and every file must equal the
committed one in common/proto (run ``make proto`` when this fails).

Compatibility: tritonclient's own generated classes (``tritonclient.grpc.service_pb2`` and
``model_config_pb2``) are the reference. Their schema is compared with ours field by field,
messages are serialised with one side and parsed with the other in both directions, and the
service must offer every method tritonclient calls, under the same path and types.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.internal import api_implementation
from google.protobuf.message import Message
from grpc_tools import grpc_version

from common.proto import POOL
from common.proto import grpc_service_pb2 as svc
from common.proto import grpc_service_pb2_grpc as svc_grpc
from common.proto import model_config_pb2 as mc

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "common" / "proto"
SERVICE = "inference.GRPCInferenceService"

EXPECTED_METHODS = {
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    "ModelStreamInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex",
    "RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings",
}

# Added to Triton's protos after some tritonclient releases (2.41 lacks them, 2.73 has them):
# allowed in ours when the installed tritonclient does not know them yet.
NEWER_THAN_SOME_CLIENTS = {
    "inference.InferResponseStatistics",
    "inference.ModelStatistics.response_stats",
    "inference.ModelStatistics.ResponseStatsEntry",
    "inference.ModelInput.is_non_linear_format_io",
    "inference.ModelOutput.is_non_linear_format_io",
    "inference.ModelConfig.runtime",
    "inference.ModelConfig.model_metrics",
    "inference.ModelMetrics",
    "inference.ModelMetrics.MetricControl",
    "inference.ModelMetrics.MetricControl.MetricIdentifier",
    "inference.ModelMetrics.MetricControl.HistogramOptions",
}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tensorgate_proto_generate",
                                                  ROOT / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


# The pure-Python protobuf backend also registers every generated message in the default pool
# (builder.py's symbol database), so there our modules and tritonclient's cannot share a process.
PURE_PYTHON = api_implementation.Type() == "python"


def _triton() -> tuple[Any, Any]:
    """tritonclient's generated modules (grpc_service, model_config); skip when not installed."""
    if PURE_PYTHON:
        pytest.skip("pure-Python protobuf backend: tritonclient's modules clash with ours")
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import model_config_pb2, service_pb2

    return service_pb2, model_config_pb2


# --------------------------------------------------------------------------- freshness


def test_committed_modules_match_the_protos(tmp_path: Path) -> None:
    fresh = {p.name: p for p in generator.generate(tmp_path)}
    committed = {p.name: p for p in COMMITTED.iterdir() if generator.is_generated(p)}
    assert sorted(fresh) == [
        "grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py",
        "model_config_pb2.py", "model_config_pb2.pyi",
    ]
    assert sorted(committed) == sorted(fresh), "run `make proto` and commit common/proto"
    stale = [n for n in sorted(fresh) if fresh[n].read_bytes() != committed[n].read_bytes()]
    if stale:
        first = stale[0]
        old, new = (d[first].read_text(encoding="utf-8").splitlines() for d in (committed, fresh))
        diff = difflib.unified_diff(old, new, f"committed/{first}", f"generated/{first}",
                                    lineterm="", n=1)
        excerpt = "\n".join(line[:160] for line in list(diff)[:40])
        pytest.fail(f"stale generated files {stale}: run `make proto` (python protos/generate.py)"
                    f" and commit common/proto. This generator is grpcio-tools "
                    f"{grpc_version.VERSION}; a different version also changes the output.\n"
                    f"{excerpt}")


def test_generate_removes_only_stale_generated_files(tmp_path: Path) -> None:
    (tmp_path / "gone_pb2.py").write_text("# left over from a deleted .proto\n")
    (tmp_path / "__init__.py").write_text("")
    generator.generate(tmp_path)
    assert not (tmp_path / "gone_pb2.py").exists()
    assert (tmp_path / "__init__.py").exists()


def test_modules_use_their_own_descriptor_pool() -> None:
    assert svc.DESCRIPTOR.pool is POOL and mc.DESCRIPTOR.pool is POOL
    if not PURE_PYTHON:
        with pytest.raises(KeyError):
            descriptor_pool.Default().FindFileByName(svc.DESCRIPTOR.name)
    found = POOL.FindMessageTypeByName("inference.ModelInferRequest")
    assert found is svc.ModelInferRequest.DESCRIPTOR


# --------------------------------------------------------------------------- schema


def _file_proto(module: Any) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    return proto


def _flatten(proto: descriptor_pb2.FileDescriptorProto,
             ) -> tuple[dict[str, descriptor_pb2.DescriptorProto],
                        dict[str, descriptor_pb2.EnumDescriptorProto]]:
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    enums = {f"{proto.package}.{e.name}": e for e in proto.enum_type}

    def visit(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        messages[name] = message
        enums.update({f"{name}.{e.name}": e for e in message.enum_type})
        for nested in message.nested_type:
            visit(name, nested)

    for message in proto.message_type:
        visit(proto.package, message)
    return messages, enums


def _field_signature(message: descriptor_pb2.DescriptorProto,
                     field: descriptor_pb2.FieldDescriptorProto) -> tuple[object, ...]:
    oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return field.name, field.label, field.type, field.type_name, oneof


def _compare_file(ours_module: Any, theirs_module: Any) -> None:
    """Every message, field and enum value tritonclient has is in ours, with the same number,
    name and type; ours has more only where NEWER_THAN_SOME_CLIENTS says so."""
    ours, our_enums = _flatten(_file_proto(ours_module))
    theirs, their_enums = _flatten(_file_proto(theirs_module))
    problems = []
    for name, message in ours.items():
        if name not in theirs:
            if name not in NEWER_THAN_SOME_CLIENTS:
                problems.append(f"{name}: not in tritonclient")
            continue
        their_fields = {f.number: f for f in theirs[name].field}
        for field in message.field:
            twin = their_fields.pop(field.number, None)
            if twin is None:
                if f"{name}.{field.name}" not in NEWER_THAN_SOME_CLIENTS:
                    problems.append(f"{name}.{field.name} = {field.number}: not in tritonclient")
            elif _field_signature(message, field) != _field_signature(theirs[name], twin):
                problems.append(f"{name} field {field.number}: ours "
                                f"{_field_signature(message, field)} != theirs "
                                f"{_field_signature(theirs[name], twin)}")
        problems += [f"{name}.{twin.name} = {number}: missing from ours"
                     for number, twin in their_fields.items()]
    problems += [f"{name}: missing from ours" for name in theirs if name not in ours]
    for name, enum in our_enums.items():
        values = {v.number: v.name for v in enum.value}
        their_values = {v.number: v.name for v in their_enums[name].value} if (
            name in their_enums) else None
        if values != their_values:
            problems.append(f"enum {name}: ours {values} != theirs {their_values}")
    assert not problems, "\n".join(problems)


def test_grpc_service_schema_matches_tritonclient() -> None:
    their_service, _ = _triton()
    _compare_file(svc, their_service)


def test_model_config_schema_is_all_of_tritonclients() -> None:
    _, their_config = _triton()
    _compare_file(mc, their_config)


def test_model_config_numbers_the_brief_names() -> None:
    fields = {f.name: f.number for f in mc.ModelConfig.DESCRIPTOR.fields}
    assert {k: fields[k] for k in (
        "name", "platform", "version_policy", "max_batch_size", "input", "output",
        "instance_group", "default_model_filename", "dynamic_batching", "parameters", "backend",
        "runtime")} == {
        "name": 1, "platform": 2, "version_policy": 3, "max_batch_size": 4, "input": 5,
        "output": 6, "instance_group": 7, "default_model_filename": 8, "dynamic_batching": 11,
        "parameters": 14, "backend": 17, "runtime": 25}
    assert mc.DataType.Value("TYPE_STRING") == 13 and mc.DataType.Value("TYPE_BF16") == 14
    choice = svc.InferParameter.DESCRIPTOR.oneofs_by_name["parameter_choice"]
    assert {f.name: f.number for f in choice.fields} == {
        "bool_param": 1, "int64_param": 2, "string_param": 3, "double_param": 4,
        "uint64_param": 5}


# --------------------------------------------------------------------------- service


def _methods(file_descriptor: Any) -> dict[str, tuple[str, str, bool, bool]]:
    proto = descriptor_pb2.ServiceDescriptorProto()
    file_descriptor.services_by_name["GRPCInferenceService"].CopyToProto(proto)
    return {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in proto.method}


def test_service_offers_every_method_tritonclient_calls() -> None:
    their_service, _ = _triton()
    assert svc.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name == SERVICE
    ours, theirs = _methods(svc.DESCRIPTOR), _methods(their_service.DESCRIPTOR)
    assert set(ours) == EXPECTED_METHODS
    assert {name: ours.get(name) for name in theirs} == theirs
    assert ours["ModelStreamInfer"][2:] == (True, True)


class _Channel:
    """Records the method paths and kinds a generated stub asks a channel for."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def __getattr__(self, kind: str) -> Any:
        def register(path: str, *args: object, **kwargs: object) -> None:
            self.paths[path] = kind
        return register


def test_stub_uses_triton_method_paths() -> None:
    channel = _Channel()
    svc_grpc.GRPCInferenceServiceStub(channel)
    expected = {f"/{SERVICE}/{m}": "unary_unary" for m in EXPECTED_METHODS}
    expected[f"/{SERVICE}/ModelStreamInfer"] = "stream_stream"
    assert channel.paths == expected


# --------------------------------------------------------------------------- wire


def _as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _cross(message: Message, other_class: Any) -> Any:
    """Serialise with one schema, parse with the other, and back again: nothing may change."""
    other = other_class.FromString(message.SerializeToString())
    assert _as_dict(other) == _as_dict(message)
    assert type(message).FromString(other.SerializeToString()) == message
    return other


def test_infer_request_built_by_tritonclient_parses_in_ours() -> None:
    _triton()
    import tritonclient.grpc as tc
    from tritonclient.grpc import _utils

    images = tc.InferInput("IMAGES", [2, 3], "FP32")
    images.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    words = tc.InferInput("WORDS", [2], "BYTES")
    words.set_data_from_numpy(np.array([b"tensor", b"gate"], dtype=np.object_))
    requested = [tc.InferRequestedOutput("SCORES", class_count=3)]
    theirs = _utils._get_inference_request(
        model_name="classifier", inputs=[images, words], model_version="2", request_id="req-1",
        outputs=requested, sequence_id=42, sequence_start=True, sequence_end=False, priority=7,
        timeout=1500, parameters={"note": "x", "flag": True, "count": 3})

    ours = _cross(theirs, svc.ModelInferRequest)
    assert ours.model_name == "classifier" and ours.model_version == "2" and ours.id == "req-1"
    assert [t.name for t in ours.inputs] == ["IMAGES", "WORDS"]
    assert list(ours.inputs[0].shape) == [2, 3] and ours.inputs[1].datatype == "BYTES"
    assert np.frombuffer(ours.raw_input_contents[0], np.float32).tolist() == [0, 1, 2, 3, 4, 5]
    assert ours.raw_input_contents[1] == b"\x06\x00\x00\x00tensor\x04\x00\x00\x00gate"
    assert ours.outputs[0].parameters["classification"].int64_param == 3
    choice = {k: v.WhichOneof("parameter_choice") for k, v in ours.parameters.items()}
    assert choice == {"sequence_id": "int64_param", "sequence_start": "bool_param",
                      "sequence_end": "bool_param", "priority": "uint64_param",
                      "timeout": "int64_param", "note": "string_param", "flag": "bool_param",
                      "count": "int64_param"}
    assert ours.parameters["priority"].uint64_param == 7


def _parameters(target: Any) -> None:
    target["b"].bool_param = True
    target["i"].int64_param = -(2**40)
    target["s"].string_param = "ünïcode"
    target["d"].double_param = 0.125
    target["u"].uint64_param = 2**64 - 1


def test_infer_request_with_typed_contents_both_ways() -> None:
    their_service, _ = _triton()
    ours = svc.ModelInferRequest(model_name="m", model_version="1", id="abc")
    _parameters(ours.parameters)
    typed: dict[str, dict[str, list[Any]]] = {
        "BOOL": {"bool_contents": [True, False]}, "INT32": {"int_contents": [-1, 2**31 - 1]},
        "INT64": {"int64_contents": [-(2**63)]}, "UINT32": {"uint_contents": [2**32 - 1]},
        "UINT64": {"uint64_contents": [2**64 - 1]}, "FP32": {"fp32_contents": [1.5, -0.25]},
        "FP64": {"fp64_contents": [1e300]}, "BYTES": {"bytes_contents": [b"\x00\xff", b""]},
    }
    for datatype, contents in typed.items():
        tensor = ours.inputs.add(name=f"IN_{datatype}", datatype=datatype, shape=[1, 2])
        _parameters(tensor.parameters)
        tensor.contents.CopyFrom(svc.InferTensorContents(**contents))
    out = ours.outputs.add(name="OUT")
    out.parameters["binary_data"].bool_param = True
    theirs = _cross(ours, their_service.ModelInferRequest)
    assert _cross(theirs, svc.ModelInferRequest) == ours
    assert theirs.parameters["u"].uint64_param == 2**64 - 1
    assert theirs.parameters["d"].double_param == 0.125

    raw = svc.ModelInferRequest(model_name="m", raw_input_contents=[b"\x01\x02", b""])
    raw.inputs.add(name="A", datatype="FP16", shape=[1])
    raw.inputs.add(name="B", datatype="BF16", shape=[0])
    theirs_raw = _cross(raw, their_service.ModelInferRequest)
    assert list(theirs_raw.raw_input_contents) == [b"\x01\x02", b""]


def test_infer_response_decodes_in_tritonclient() -> None:
    their_service, _ = _triton()
    import tritonclient.grpc as tc

    ours = svc.ModelInferResponse(model_name="m", model_version="3", id="req-9")
    _parameters(ours.parameters)
    ours.outputs.add(name="RAW", datatype="FP32", shape=[2, 2])
    ours.raw_output_contents.append(np.array([[1, 2], [3, 4]], dtype=np.float32).tobytes())
    ours.outputs.add(name="TEXT", datatype="BYTES", shape=[2])
    ours.raw_output_contents.append(b"\x01\x00\x00\x00a\x02\x00\x00\x00bc")
    theirs = _cross(ours, their_service.ModelInferResponse)

    result = tc.InferResult(theirs)
    assert result.as_numpy("RAW").tolist() == [[1, 2], [3, 4]]
    assert result.as_numpy("TEXT").tolist() == [b"a", b"bc"]
    stream = svc.ModelStreamInferResponse(error_message="", infer_response=ours)
    assert _cross(stream, their_service.ModelStreamInferResponse).infer_response.id == "req-9"
    failed = svc.ModelStreamInferResponse(error_message="INVALID_ARGUMENT: bad shape")
    assert _cross(failed, their_service.ModelStreamInferResponse).error_message.startswith("INV")

    typed = svc.ModelInferResponse(model_name="m")
    tensor = typed.outputs.add(name="I", datatype="INT32", shape=[3])
    tensor.contents.int_contents.extend([1, -2, 3])
    _parameters(tensor.parameters)
    assert list(_cross(typed, their_service.ModelInferResponse).outputs[0].contents.int_contents) \
        == [1, -2, 3]


def _model_config() -> Any:
    config = mc.ModelConfig(name="resnet", platform="onnxruntime_onnx", backend="onnxruntime",
                            runtime="libtriton_onnxruntime.so", max_batch_size=16,
                            default_model_filename="model.onnx")
    config.version_policy.latest.num_versions = 2
    config.input.add(name="INPUT__0", data_type=mc.TYPE_FP32, format=mc.ModelInput.FORMAT_NCHW,
                     dims=[3, -1, -1], allow_ragged_batch=True, optional=True)
    config.input[0].reshape.shape.extend([1, 3, 224, 224])
    config.output.add(name="OUTPUT__0", data_type=mc.TYPE_BF16, dims=[1000],
                      label_filename="labels.txt", is_shape_tensor=False)
    config.instance_group.add(name="gpu", kind=mc.ModelInstanceGroup.KIND_GPU, count=2,
                              gpus=[0, 1], passive=True, host_policy="numa0")
    batching = config.dynamic_batching
    batching.preferred_batch_size.extend([4, 8])
    batching.max_queue_delay_microseconds = 500
    batching.preserve_ordering = True
    batching.priority_levels = 2
    batching.default_priority_level = 1
    batching.default_queue_policy.timeout_action = mc.ModelQueuePolicy.DELAY
    batching.default_queue_policy.default_timeout_microseconds = 10**6
    batching.default_queue_policy.allow_timeout_override = True
    batching.default_queue_policy.max_queue_size = 64
    batching.priority_queue_policy[1].max_queue_size = 8
    config.parameters["threads"].string_value = "4"
    config.metric_tags["team"] = "vision"
    config.cc_model_filenames["8.0"] = "model_a100.onnx"
    warmup = config.model_warmup.add(name="zeros", batch_size=1, count=2)
    warmup.inputs["INPUT__0"].data_type = mc.TYPE_FP32
    warmup.inputs["INPUT__0"].dims.extend([3, 224, 224])
    warmup.inputs["INPUT__0"].zero_data = True
    config.model_transaction_policy.decoupled = True
    config.response_cache.enable = True
    return config


def test_model_config_response_both_ways() -> None:
    their_service, their_config = _triton()
    config = _model_config()
    if "runtime" not in their_config.ModelConfig.DESCRIPTOR.fields_by_name:
        config.ClearField("runtime")  # newer than this tritonclient; the schema test covers it
    ours = svc.ModelConfigResponse(config=config)
    theirs = _cross(ours, their_service.ModelConfigResponse)
    assert theirs.config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert theirs.config.input[0].data_type == their_config.TYPE_FP32
    # tritonclient's get_model_config(as_json=True) is MessageToJson on this message.
    assert json_format.MessageToJson(theirs, preserving_proto_field_name=True) == \
        json_format.MessageToJson(ours, preserving_proto_field_name=True)

    # The parts tensorgate does not run are known fields too (_cross compares them as JSON).
    full = their_config.ModelConfig(name="seq")
    full.sequence_batching.max_sequence_idle_microseconds = 5
    full.optimization.priority = their_config.ModelOptimizationPolicy.PRIORITY_MAX
    full.batch_input.add(target_name=["X"])
    ours_full = _cross(full, mc.ModelConfig)
    assert ours_full.WhichOneof("scheduling_choice") == "sequence_batching"
    assert ours_full.sequence_batching.max_sequence_idle_microseconds == 5


def test_statistics_index_and_metadata_responses_both_ways() -> None:
    their_service, _ = _triton()
    stats = svc.ModelStatisticsResponse()
    model = stats.model_stats.add(name="m", version="1", last_inference=1_700_000_000_000,
                                  inference_count=96, execution_count=12)
    for i, part in enumerate(("success", "fail", "queue", "compute_input", "compute_infer",
                              "compute_output", "cache_hit", "cache_miss")):
        getattr(model.inference_stats, part).CopyFrom(svc.StatisticDuration(count=i + 1,
                                                                             ns=1000 * i))
    batch = model.batch_stats.add(batch_size=8)
    batch.compute_infer.count, batch.compute_infer.ns = 12, 2**40
    model.memory_usage.add(type="GPU", id=0, byte_size=2**31)
    _cross(stats, their_service.ModelStatisticsResponse)

    index = svc.RepositoryIndexResponse()
    index.models.add(name="a", version="1", state="READY")
    index.models.add(name="b", state="UNAVAILABLE", reason="unloaded")
    _cross(index, their_service.RepositoryIndexResponse)

    meta = svc.ModelMetadataResponse(name="m", versions=["1", "2"], platform="onnxruntime_onnx")
    meta.inputs.add(name="IN", datatype="FP32", shape=[-1, 3])
    meta.outputs.add(name="OUT", datatype="BYTES", shape=[-1])
    _cross(meta, their_service.ModelMetadataResponse)


# Every message of the service, filled automatically with non-default values in every field
# both schemas have; `variant` rotates which member of each oneof is set.

def _scalar(field: FieldDescriptor, twin: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert isinstance(field.enum_type, EnumDescriptor) and twin.enum_type is not None
        common = {v.number for v in field.enum_type.values} & {
            v.number for v in twin.enum_type.values}
        return max(common)
    return {
        FieldDescriptor.TYPE_BOOL: True, FieldDescriptor.TYPE_INT32: -(2**31),
        FieldDescriptor.TYPE_INT64: -(2**63), FieldDescriptor.TYPE_UINT32: 2**32 - 1,
        FieldDescriptor.TYPE_UINT64: 2**64 - 1, FieldDescriptor.TYPE_FLOAT: -1.5,
        FieldDescriptor.TYPE_DOUBLE: 2.0**-30, FieldDescriptor.TYPE_STRING: f"{field.name}-ü",
        FieldDescriptor.TYPE_BYTES: b"\x00\xff" + field.name.encode(),
    }[field.type]


def _fill(message: Message, twin: Descriptor, variant: int, depth: int = 0) -> None:
    descriptor = message.DESCRIPTOR
    chosen = {}
    for oneof in descriptor.oneofs:
        members = [f for f in oneof.fields if f.number in twin.fields_by_number]
        if members:
            chosen[oneof.name] = members[variant % len(members)].number
    for field in descriptor.fields:
        other = twin.fields_by_number.get(field.number)
        if other is None or (field.containing_oneof is not None
                             and chosen.get(field.containing_oneof.name) != field.number):
            continue
        value_type = field.message_type
        if value_type is not None and value_type.GetOptions().map_entry:
            key_field = value_type.fields_by_name["key"]
            value_field = value_type.fields_by_name["value"]
            other_value = other.message_type.fields_by_name["value"]
            key = _scalar(key_field, other.message_type.fields_by_name["key"])
            container = getattr(message, field.name)
            if value_field.message_type is not None:
                if depth < 4:
                    _fill(container[key], other_value.message_type, variant, depth + 1)
            else:
                container[key] = _scalar(value_field, other_value)
        elif value_type is not None:
            if depth >= 4:
                continue
            if field.is_repeated:
                _fill(getattr(message, field.name).add(), other.message_type, variant, depth + 1)
            else:
                child = getattr(message, field.name)
                child.SetInParent()
                _fill(child, other.message_type, variant, depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).extend([_scalar(field, other)] * 2)
        else:
            setattr(message, field.name, _scalar(field, other))


@pytest.mark.parametrize("variant", range(5))
@pytest.mark.parametrize("name", sorted(svc.DESCRIPTOR.message_types_by_name))
def test_every_service_message_round_trips(name: str, variant: int) -> None:
    their_service, _ = _triton()
    if not hasattr(their_service, name):
        assert f"inference.{name}" in NEWER_THAN_SOME_CLIENTS
        pytest.skip(f"{name} is newer than the installed tritonclient")
    ours_class, their_class = getattr(svc, name), getattr(their_service, name)
    ours = ours_class()
    _fill(ours, their_class.DESCRIPTOR, variant)
    _cross(ours, their_class)
    theirs = their_class()
    _fill(theirs, ours_class.DESCRIPTOR, variant)
    _cross(theirs, ours_class)


# --------------------------------------------------------------------------- over the wire


class _EchoServicer(svc_grpc.GRPCInferenceServiceServicer):
    """Just enough of a server, on our generated stubs, for tritonclient to talk to."""

    def ServerLive(self, request: Any, context: Any) -> Any:
        return svc.ServerLiveResponse(live=True)

    def ModelConfig(self, request: Any, context: Any) -> Any:
        config = _model_config()
        config.name = request.name
        return svc.ModelConfigResponse(config=config)

    def ModelInfer(self, request: Any, context: Any) -> Any:
        response = svc.ModelInferResponse(model_name=request.model_name, model_version="1",
                                          id=request.id)
        response.parameters["priority_seen"].uint64_param = \
            request.parameters["priority"].uint64_param
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            response.outputs.add(name=f"{tensor.name}_OUT", datatype=tensor.datatype,
                                 shape=tensor.shape)
            doubled = np.frombuffer(raw, dtype=np.float32) * 2
            response.raw_output_contents.append(doubled.tobytes())
        return response

    def ModelStreamInfer(self, request_iterator: Any, context: Any) -> Any:
        for request in request_iterator:
            yield svc.ModelStreamInferResponse(infer_response=self.ModelInfer(request, context))


def test_tritonclient_talks_to_a_server_built_on_our_stubs() -> None:
    _triton()
    import queue
    from concurrent import futures

    import grpc
    import tritonclient.grpc as tc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    svc_grpc.add_GRPCInferenceServiceServicer_to_server(_EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = tc.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        assert client.is_server_live()
        config = client.get_model_config("resnet", as_json=True)["config"]
        assert config["name"] == "resnet" and config["dynamic_batching"]["preserve_ordering"]

        data = tc.InferInput("X", [1, 3], "FP32")
        data.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))
        result = client.infer("m", [data], request_id="r1", priority=5)
        assert result.as_numpy("X_OUT").tolist() == [[2, 4, 6]]
        assert result.get_response().id == "r1"
        assert result.get_response().parameters["priority_seen"].uint64_param == 5

        received: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=lambda result, error: received.put((result, error)))
        client.async_stream_infer("m", [data], request_id="s1")
        result, error = received.get(timeout=10)
        assert error is None and result.as_numpy("X_OUT").tolist() == [[2, 4, 6]]
        client.stop_stream()
    finally:
        client.close()
        server.stop(None)


def test_vendored_proto_is_what_the_script_writes() -> None:
    _triton()
    import importlib.metadata

    spec = importlib.util.spec_from_file_location("tensorgate_vendor",
                                                  ROOT / "protos" / "vendor_model_config.py")
    assert spec is not None and spec.loader is not None
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    committed = (ROOT / "protos" / "model_config.proto").read_text(encoding="utf-8")
    version = importlib.metadata.version("tritonclient")
    if f"(tritonclient {version}, LICENSE.txt" not in committed:
        pytest.skip(f"vendored from another tritonclient than the installed {version}")
    assert vendor.render() == committed, "rerun protos/vendor_model_config.py"
