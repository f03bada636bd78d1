"""Pure codecs between OIP HTTP bodies (JSON and binary tensor data) and the gRPC messages."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from google.protobuf.message import Message

from common import regions
from common.datatypes import ALL_DATATYPES
from common.errors import TensorgateError, invalid_argument
from common.names import shown
from common.proto import grpc_service_pb2 as pb
from common.tensors import element_count, expected_byte_size, json_to_raw, raw_to_json
from common.wire import LENGTH_DELIMITED, Buffer, WireError, fields
from gateway.request_parts import SPLIT_FROM_BYTES

# Parameters that steer this codec and mean nothing to the model.
_CODEC_PARAMETERS = {"binary_data_output", "binary_data_size", "binary_data"}
# What an InferParameter can hold: JSON integers outside both ranges are refused.
_INT64 = range(-(1 << 63), 1 << 63)
_UINT64 = range(1 << 64)
#: orjson reads an integer past 64 bits as a float: a float parameter this large may have been
#: one, so the header is read again exactly (rare: no real double parameter is that large).
_MAYBE_INTEGER = float(1 << 63)
#: A request id is echoed in the X-Request-Id header: no control characters, and bounded.
#: (Feedback matches ids of at most 128 printable ASCII characters: see gateway/feedback.py.)
MAX_REQUEST_ID_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Float datatypes whose JSON outputs may hold NaN or infinities.
_FLOATS = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
_RAW_OUTPUT_CONTENTS = 6  # ModelInferResponse's field number
#: An output's raw bytes: a view of the answer, or the message's own.
Raw = bytes | memoryview


@dataclass
class OutputPrefs:
    """Which outputs the caller wants as binary data rather than JSON."""

    default_binary: bool = False
    per_output: dict[str, bool] = field(default_factory=dict)
    #: Outputs written into a shared-memory region: answered without data.
    shm: set[str] = field(default_factory=set)


def decode_infer_request(
    body: bytes, json_length: int | None, model: str, version: str
) -> tuple[pb.ModelInferRequest, OutputPrefs]:
    """An HTTP infer body to a ModelInferRequest with raw tensors, and the output preferences."""
    request, tensors, prefs = decode_infer_parts(body, json_length, model, version)
    request.raw_input_contents.extend(bytes(tensor) for tensor in tensors)
    return request, prefs


def decode_infer_parts(
    body: Buffer, json_length: int | None, model: str, version: str
) -> tuple[pb.ModelInferRequest, list[Buffer], OutputPrefs]:
    """An HTTP infer body to a ModelInferRequest, its raw tensors and the output preferences.
    A large body's tensors are kept out of the message, as views of its binary data (not
    copied); a small one's are in the message, and the list is empty."""
    view = memoryview(body)
    end = len(body) if json_length is None else json_length
    if end < 0:
        raise invalid_argument(f"Inference-Header-Content-Length {end} is negative")
    if end > len(body):
        raise invalid_argument(f"Inference-Header-Content-Length {end} exceeds the body "
                               f"({len(body)} bytes)")
    try:
        header = orjson.loads(view[:end])
    except orjson.JSONDecodeError as exc:
        raise invalid_argument(_not_json(exc, json_length, len(body))) from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise invalid_argument("request body must be a JSON object with an 'inputs' list")
    if _maybe_big_integer(header):
        header = _exact(view[:end])
    request_id = _request_id(header.get("id", ""))
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    params = _dict(header.get("parameters"), "parameters")
    _set_parameters(request.parameters, params)
    offset = end
    # NOTE: a small body's tensors go straight into the message: cheaper than a list of views.
    tensors: list[Buffer] | None = [] if len(body) >= SPLIT_FROM_BYTES else None
    for i, item in enumerate(header["inputs"]):
        offset = _add_input(request, tensors, item, i, view, offset)
    # NOTE: the runtime refuses these too; refusing here names the fault before a network hop.
    # The names come from the JSON items (_add_input checked them): reading them back out of
    # the message costs more.
    _unique([item["name"] for item in header["inputs"]], "input")
    if offset != len(body):
        raise invalid_argument(f"body has {len(body) - offset} bytes beyond the binary tensors "
                               "the header declares")
    prefs = OutputPrefs(default_binary=bool(params.get("binary_data_output")))
    _add_outputs(request, header.get("outputs") or [], prefs)
    return request, tensors or [], prefs


def _request_id(value: Any) -> str:
    if type(value) is not str:
        raise invalid_argument("'id' must be a string")
    if len(value) > MAX_REQUEST_ID_CHARS or _CONTROL.search(value):
        raise invalid_argument(f"'id' must be at most {MAX_REQUEST_ID_CHARS} characters without "
                               f"control characters (CR, LF, NUL, ...); got {shown(value)}")
    return value


def _maybe_big_integer(header: dict[str, Any]) -> bool:
    """Whether a parameter is a float that may have been an integer past 64 bits."""
    groups = [header.get("parameters")]
    for item in (header["inputs"], header.get("outputs")):
        if isinstance(item, list):
            groups += [entry.get("parameters") for entry in item if isinstance(entry, dict)]
    return any(isinstance(value, float) and value.is_integer() and abs(value) >= _MAYBE_INTEGER
               for params in groups if isinstance(params, dict) for value in params.values())


def _not_json(exc: ValueError, json_length: int | None, size: int) -> str:
    if json_length is None or json_length == size:
        return f"request body is not valid JSON: {exc}"
    # NOTE: a client that reuses one headers dict (tritonclient.http writes into it) can send
    # a stale length with a body that has no binary part.
    return (f"the request's JSON header, its first {json_length} bytes as "
            f"Inference-Header-Content-Length says (of a {size}-byte body), is not valid JSON: "
            f"{exc}")


def _exact(text: memoryview) -> dict[str, Any]:
    """The header read by the standard library, which keeps integers exact."""
    try:
        header = json.loads(bytes(text))
    except (ValueError, RecursionError) as exc:
        raise invalid_argument(f"request body is not valid JSON: {exc}") from None
    assert isinstance(header, dict)  # NOTE: orjson read the same text as an object
    return header


def _add_outputs(request: pb.ModelInferRequest, outputs: Any, prefs: OutputPrefs) -> None:
    if not isinstance(outputs, list):
        raise invalid_argument("'outputs' must be a list")
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid_argument("each entry of 'outputs' must be an object with a 'name'")
        output = request.outputs.add(name=item["name"])
        params = _dict(item.get("parameters"), "outputs.parameters")
        binary = params.get("binary_data")
        if len(params) > (binary is not None):
            # NOTE: passed on (classification); the runtime refuses any it does not support.
            _set_parameters(output.parameters, params)
        if binary is not None:
            prefs.per_output[item["name"]] = bool(binary)
        if regions.REGION in params:
            prefs.shm.add(item["name"])
    _unique([item["name"] for item in outputs], "output")


def _unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise invalid_argument(f"{what} '{name}' appears twice in the request")
        seen.add(name)


def _add_input(request: pb.ModelInferRequest, tensors: list[Buffer] | None, item: Any, i: int,
               body: memoryview, offset: int) -> int:
    if type(item) is not dict or type(item.get("name")) is not str:
        raise invalid_argument(f"inputs[{i}] must be an object with a 'name'")
    name, datatype, shape = item["name"], item.get("datatype"), item.get("shape")
    if type(datatype) is not str:
        raise _bad(request, name, "'datatype' must be a string")
    if type(shape) is not list or not all(type(d) is int for d in shape):
        raise _bad(request, name, "'shape' must be a list of integers")
    if datatype not in ALL_DATATYPES:
        raise _bad(request, name, f"unknown datatype '{datatype}'; one of "
                                  f"{', '.join(ALL_DATATYPES)}")
    count = element_count(shape, _what(request, name))
    params = _dict(item.get("parameters"), f"inputs[{i}].parameters")
    size = params.get("binary_data_size")
    raw: Buffer | None = None
    if regions.REGION in params:
        if size is not None or "data" in item:
            raise _bad(request, name, "data in a shared memory region takes neither 'data' "
                                      "nor a binary_data_size parameter")
    elif size is not None:
        if type(size) is not int or size < 0 or offset + size > len(body):
            raise _bad(request, name, f"binary_data_size {size} runs past the end of the body "
                                      f"({len(body) - offset} bytes left)")
        expected = expected_byte_size(datatype, count)
        if expected is not None and size != expected:
            raise _bad(request, name, f"shape {shape} of {datatype} takes {expected} bytes, "
                                      f"binary_data_size is {size}")
        raw = body[offset : offset + size]
        offset += size
    elif "data" in item:
        raw = json_to_raw(datatype, shape, item["data"], _what(request, name))
    else:
        raise _bad(request, name, "needs 'data' or a binary_data_size parameter")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    _set_parameters(tensor.parameters, params)
    if raw is not None and tensors is not None:
        tensors.append(raw)
    elif raw is not None:
        request.raw_input_contents.append(bytes(raw))
    return offset


def _what(request: pb.ModelInferRequest, name: str) -> str:
    return f"input '{name}' of model '{request.model_name}'"


def _bad(request: pb.ModelInferRequest, name: str, text: str) -> TensorgateError:
    return invalid_argument(f"{_what(request, name)}: {text}")


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_argument(f"{what} must be a JSON object")
    return value


def _set_parameters(target: Any, params: dict[str, Any]) -> None:
    for key, value in params.items():
        if key in _CODEC_PARAMETERS:
            continue
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int) and value in _INT64:
            target[key].int64_param = value
        elif isinstance(value, int) and value in _UINT64:
            target[key].uint64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        elif isinstance(value, str):
            target[key].string_param = value
        else:
            raise invalid_argument(f"parameter '{key}' must be a string, a number within "
                                   "64 bits or a boolean")


def decode_infer_answer(answer: bytes) -> tuple[pb.ModelInferResponse, Sequence[Raw]]:
    """A serialized ModelInferResponse as the message without its raw outputs, and those as
    views of ``answer`` (not copied)."""
    if len(answer) < SPLIT_FROM_BYTES:  # NOTE: one protobuf call costs less than the walk
        response = pb.ModelInferResponse.FromString(answer)
        return response, response.raw_output_contents
    view = memoryview(answer)
    kept: list[Raw] = []
    raws: list[Raw] = []
    try:
        for number, wire, start, value, end in fields(view):
            if number == _RAW_OUTPUT_CONTENTS and wire == LENGTH_DELIMITED:
                raws.append(view[value:end])
            else:
                kept.append(view[start:end])
    except WireError:
        kept, raws = [answer], []  # NOTE: protobuf's parser names what is wrong with it
    response = pb.ModelInferResponse.FromString(kept[0] if len(kept) == 1 else b"".join(kept))
    return response, raws or response.raw_output_contents


def encode_infer_response(
    response: pb.ModelInferResponse, prefs: OutputPrefs, raws: Sequence[Raw] | None = None
) -> tuple[bytes, int | None]:
    """The HTTP body and, when binary outputs follow the JSON, the JSON's length. ``raws``:
    the raw outputs when the message holds none (decode_infer_answer)."""
    parts, json_length = encode_infer_parts(response, prefs, raws)
    return b"".join(parts), json_length  # NOTE: one part is returned as it is, not copied


def encode_infer_parts(
    response: pb.ModelInferResponse, prefs: OutputPrefs, raws: Sequence[Raw] | None = None
) -> tuple[list[Raw], int | None]:
    """encode_infer_response's body as its parts, the JSON then each binary output (views of
    the answer, not copied): written as they are, a large answer is never joined."""
    outputs = []
    blobs: list[Raw] = []
    finite = True
    raws = response.raw_output_contents if raws is None else raws
    for out, raw in zip(response.outputs, raws):
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype,
                                 "shape": list(out.shape)}
        if out.name in prefs.shm:
            # NOTE: its bytes are in the region. No `parameters` either: Triton's C++ client
            # (perf_analyzer) takes an output's parameters to describe binary data.
            outputs.append(entry)
            continue
        if prefs.per_output.get(out.name, prefs.default_binary):
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = raw_to_json(out.datatype, out.shape, raw, f"output '{out.name}'")
            finite = finite and _finite(out.datatype, raw)
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": response.model_name,
                              "model_version": response.model_version, "outputs": outputs}
    if response.id:
        answer["id"] = response.id
    # NOTE: orjson writes NaN and infinities as null; the standard library writes NaN, Infinity
    # and -Infinity, which tritonclient (rapidjson) and Python's json read back as floats.
    header = orjson.dumps(answer) if finite else json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return [header], None
    return [header, *blobs], len(header)


def _finite(datatype: str, raw: Raw) -> bool:
    dtype = _FLOATS.get(datatype)
    return dtype is None or bool(np.isfinite(np.frombuffer(raw, dtype)).all())


def message_to_json(message: Message) -> dict[str, Any]:
    """A protobuf message as Triton's HTTP JSON: field names kept, integers as numbers."""
    result: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        oneof = fd.containing_oneof
        if oneof is not None and message.WhichOneof(oneof.name) != fd.name:
            continue
        value = getattr(message, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            result[fd.name] = {k: _scalar(value_fd, v) for k, v in value.items()}
        elif fd.is_repeated:
            result[fd.name] = [_scalar(fd, v) for v in value]
        else:
            result[fd.name] = _scalar(fd, value)
    return result


def _scalar(fd: Any, value: Any) -> Any:
    if fd.message_type is not None:
        return message_to_json(value)
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value
