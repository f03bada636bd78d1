"""TensorFlow Serving / KServe v1 REST bodies to our ModelInferRequest, and answers back.

Pure codecs: a model's signature (from its metadata) and a body in; protobuf or JSON out.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from common.datatypes import NUMPY_DTYPES
from common.errors import TensorgateError, invalid_argument
from common.names import shown
from common.proto import grpc_service_pb2 as pb
from common.tensors import deserialize_bytes, json_to_raw, serialize_bytes

#: Our datatypes by TensorFlow's DataType names, as TF Serving's metadata shows them.
TF_DTYPES: dict[str, str] = {
    "BOOL": "DT_BOOL", "UINT8": "DT_UINT8", "UINT16": "DT_UINT16", "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64", "INT8": "DT_INT8", "INT16": "DT_INT16", "INT32": "DT_INT32",
    "INT64": "DT_INT64", "FP16": "DT_HALF", "FP32": "DT_FLOAT", "FP64": "DT_DOUBLE",
    "BYTES": "DT_STRING", "BF16": "DT_BFLOAT16",
}
#: The only signature a model has here; TF Serving's default one.
DEFAULT_SIGNATURE = "serving_default"
#: Deepest nesting read from a value; far past any real tensor's rank.
MAX_RANK = 32
_FLOATS = frozenset(("FP16", "FP32", "FP64"))


class PredictBody(BaseModel):
    """`POST /v1/models/{m}:predict`: TF Serving's row (`instances`) or columnar (`inputs`)."""

    model_config = ConfigDict(extra="forbid")
    signature_name: str = ""
    instances: list[Any] | None = None
    inputs: Any = None


@dataclass(frozen=True)
class Spec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Signature:
    """A model's inputs, outputs and versions, from its metadata."""

    inputs: tuple[Spec, ...]
    outputs: tuple[Spec, ...]
    versions: tuple[str, ...]


@dataclass
class Predict:
    request: pb.ModelInferRequest
    row: bool  # row format (`instances` → `predictions`), else columnar (`inputs` → `outputs`)
    batch: int  # instances in a row-format request
    signature_name: str


def signature_of(meta: pb.ModelMetadataResponse) -> Signature:
    def specs(tensors: Any) -> tuple[Spec, ...]:
        return tuple(Spec(t.name, t.datatype, tuple(t.shape)) for t in tensors)
    return Signature(specs(meta.inputs), specs(meta.outputs), tuple(meta.versions))


def decode_predict(body: bytes, signature: Signature, model: str, version: str) -> Predict:
    """A predict body as a ModelInferRequest, each tensor checked against the signature."""
    try:
        parsed = PredictBody.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise invalid_argument(f"invalid predict body: {_problems(exc)}") from None
    if (parsed.instances is None) == (parsed.inputs is None):
        raise invalid_argument('a predict body holds exactly one of "instances" (row format) '
                               'or "inputs" (columnar format)')
    row = parsed.instances is not None
    if row:
        assert parsed.instances is not None
        if not parsed.instances:
            raise invalid_argument('"instances" is empty: send at least one instance')
        values = _rows_to_columns(parsed.instances, signature)
    else:
        values = _named(parsed.inputs, signature, '"inputs"')
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for spec in signature.inputs:
        shape, raw = _tensor(spec, values[spec.name], row)
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return Predict(request, row, len(parsed.instances or ()), parsed.signature_name)


def _problems(exc: ValidationError) -> str:
    return "; ".join(_problem(e) for e in exc.errors()[:5])


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "body"
    if error["type"] == "extra_forbidden":
        return (f"unknown field {shown(where)}: a predict body holds \"instances\" or "
                f"\"inputs\", and optionally \"signature_name\"")
    return f"{where}: {error['msg']}"


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _named(value: Any, signature: Signature, what: str) -> dict[str, Any]:
    """The value of each input: an object by input name, or the value itself for one input."""
    names = [spec.name for spec in signature.inputs]
    if not isinstance(value, dict) or _is_b64(value):
        if len(names) != 1:
            raise invalid_argument(f"{what}: this model takes several inputs ({_listed(names)}): "
                                   f"send an object with a value for each")
        return {names[0]: value}
    unknown = [name for name in value if name not in names]
    if unknown:
        raise invalid_argument(f"{what}: no input named {shown(unknown[0])}; this model takes "
                               f"{_listed(names)}")
    missing = [name for name in names if name not in value]
    if missing:
        raise invalid_argument(f"{what}: input '{missing[0]}' is missing; this model takes "
                               f"{_listed(names)}")
    return value


def _rows_to_columns(instances: list[Any], signature: Signature) -> dict[str, Any]:
    """Row format: each instance one row; named instances (objects) become one list per input."""
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named:
        return _named(instances, signature, '"instances"')
    columns: dict[str, list[Any]] = {spec.name: [] for spec in signature.inputs}
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or _is_b64(instance):
            raise invalid_argument(f'"instances"[{i}]: expected an object like instance 0 '
                                   f"(every instance names its inputs, or none does)")
        for name, value in _named(instance, signature, f'"instances"[{i}]').items():
            columns[name].append(value)
    return columns


def _listed(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _tensor(spec: Spec, value: Any, row: bool) -> tuple[list[int], bytes]:
    """One input's shape (from the value's nesting) and raw contents, checked against `spec`."""
    what = f"input '{spec.name}'"
    shape, flat = _shape(value, what)
    if not _fits(shape, spec.shape):
        if row and shape:
            raise invalid_argument(f"{what}: each instance's value must have shape "
                                   f"{_dims(spec.shape[1:])}, got {shape[1:]}")
        hint = "" if row else " (columnar values include the batch dimension)"
        raise invalid_argument(f"{what}: expected shape {_dims(spec.shape)}, got {shape}{hint}")
    if spec.datatype == "BYTES":
        return shape, serialize_bytes(_bytes(item, what) for item in flat)
    if any(_is_b64(item) for item in flat):
        raise invalid_argument(f'{what}: {{"b64": ...}} values are for string inputs only; '
                               f"this input is {TF_DTYPES.get(spec.datatype, spec.datatype)}")
    return shape, json_to_raw(spec.datatype, shape, flat, what)


def _shape(value: Any, what: str) -> tuple[list[int], list[Any]]:
    """The shape of nested lists and their elements, row-major; ragged lists are refused.

    Level by level and bounded by MAX_RANK, so deep nesting cannot exhaust the stack.
    """
    shape: list[int] = []
    level = [value]
    while level and isinstance(level[0], list):
        size = len(level[0])
        if any(not isinstance(item, list) or len(item) != size for item in level):
            raise invalid_argument(f"{what}: ragged value: the lists at depth {len(shape) + 1} "
                                   f"differ in length or mix lists and scalars")
        shape.append(size)
        if len(shape) > MAX_RANK:
            raise invalid_argument(f"{what}: nested deeper than {MAX_RANK} levels")
        level = [item for items in level for item in items]
    if any(isinstance(item, list) for item in level):
        raise invalid_argument(f"{what}: ragged value: lists and scalars mixed at depth "
                               f"{len(shape) + 1}")
    return shape, level


def _fits(shape: list[int], expected: tuple[int, ...]) -> bool:
    return len(shape) == len(expected) and all(e < 0 or e == s for s, e in zip(shape, expected))


def _dims(shape: tuple[int, ...]) -> str:
    """A shape as the caller should read it: -1 is any size."""
    return "[" + ", ".join("any" if d < 0 else str(d) for d in shape) + "]"


def _bytes(item: Any, what: str) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if _is_b64(item) and isinstance(item["b64"], str):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except binascii.Error:
            raise invalid_argument(f'{what}: a {{"b64": ...}} value is not valid base64') from None
    raise invalid_argument(f'{what}: string values must be strings or {{"b64": "<base64>"}}, '
                           f"got {shown(item)}")


def encode_predict(response: pb.ModelInferResponse, predict: Predict) -> bytes:
    """The answer in TF Serving's shape: `{"predictions": [...]}` or `{"outputs": ...}`."""
    outputs: dict[str, Any] = {}
    finite = True
    for out, raw in zip(response.outputs, response.raw_output_contents):
        outputs[out.name], ok = _output(out, raw)
        finite = finite and ok
    if predict.row:
        answer: dict[str, Any] = {"predictions": _rows(response, outputs, predict.batch)}
    else:
        answer = {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    # NOTE: orjson writes NaN and infinities as null; TF Serving writes them as NaN / Infinity.
    return orjson.dumps(answer) if finite else json.dumps(answer, separators=(",", ":")).encode()


def _output(out: Any, raw: bytes) -> tuple[Any, bool]:
    """An output as nested lists; strings as text, or `{"b64": ...}` when binary (TF's rule:
    a name ending in `_bytes`, and here also any element that is not UTF-8 text)."""
    shape = list(out.shape)
    if out.datatype == "BYTES":
        items = deserialize_bytes(raw, f"output '{out.name}'")
        values: list[Any] = [] if out.name.endswith("_bytes") else _texts(items)
        if len(values) != len(items):
            values = [{"b64": base64.b64encode(item).decode()} for item in items]
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return _reshaped(array, shape, out.name), True
    dtype = NUMPY_DTYPES.get(out.datatype)
    if dtype is None:
        raise invalid_argument(f"output '{out.name}': datatype {out.datatype} cannot be "
                               f"returned as JSON; call the v2 API for it")
    array = np.frombuffer(raw, dtype=dtype)
    finite = out.datatype not in _FLOATS or bool(np.isfinite(array).all())
    return _reshaped(array.astype(np.float32) if out.datatype == "FP16" else array, shape,
                     out.name), finite


def _texts(items: list[bytes]) -> list[Any]:
    try:
        return [item.decode() for item in items]
    except UnicodeDecodeError:
        return []


def _reshaped(array: np.ndarray, shape: list[int], name: str) -> Any:
    try:
        return array.reshape(shape).tolist()
    except ValueError:
        raise TensorgateError(grpc.StatusCode.INTERNAL, f"output '{name}': {array.size} "
                              f"elements do not fill its shape {shape}") from None


def _rows(response: pb.ModelInferResponse, outputs: dict[str, Any], batch: int) -> list[Any]:
    """Row format: one prediction per instance; with several outputs, each an object."""
    for out in response.outputs:
        if not out.shape or out.shape[0] != batch:
            raise invalid_argument(f"output '{out.name}' has shape {list(out.shape)}, not one "
                                   f"row per instance ({batch}): send the columnar format "
                                   f'{{"inputs": ...}} to get it whole')
    if len(outputs) == 1:
        return list(next(iter(outputs.values())))
    return [{name: value[i] for name, value in outputs.items()} for i in range(batch)]


def metadata_body(model: str, version: str, signature: Signature) -> dict[str, Any]:
    """`GET /v1/models/{m}/metadata` in TF Serving's shape, with the one default signature."""
    def tensors(specs: tuple[Spec, ...]) -> dict[str, Any]:
        return {spec.name: {"dtype": TF_DTYPES.get(spec.datatype, "DT_INVALID"),
                            "tensor_shape": {"dim": [{"size": str(d)} for d in spec.shape]},
                            "name": spec.name} for spec in specs}
    definition = {"inputs": tensors(signature.inputs), "outputs": tensors(signature.outputs),
                  "method_name": "tensorflow/serving/predict"}
    return {"model_spec": {"name": model, "signature_name": "", "version": version},
            "metadata": {"signature_def": {"signature_def": {DEFAULT_SIGNATURE: definition}}}}


def status_body(ready: dict[str, bool]) -> dict[str, Any]:
    """`GET /v1/models/{m}`: each version's state, as TF Serving's ModelVersionStatus."""
    return {"model_version_status": [
        {"version": version, "state": "AVAILABLE" if up else "UNKNOWN",
         "status": {"error_code": "OK" if up else "UNAVAILABLE",
                    "error_message": "" if up else "this version is not ready"}}
        for version, up in ready.items()]}
