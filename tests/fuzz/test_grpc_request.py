"""Fuzz the gRPC path: peeking raw request bytes, then the runtime's validation of parsed ones."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st

from common.errors import TensorgateError
from common.model_config import ModelConfig, TensorSpec
from common.proto import grpc_service_pb2 as pb
from common.wire import MAX_FIELDS
from gateway.peek import model_and_version
from runtime.decode import InferCall
from runtime.model import ServedModel
from runtime.validate import check
from tests.fuzz.strategies import DATATYPES, FUZZ, SHAPES


def served(max_batch_size: int) -> ServedModel:
    """A model with one FP32 [4], one BYTES [2] and one INT8 [-1] input, without a backend."""
    backend = SimpleNamespace(
        platform="fake", inputs=(TensorSpec("A", "FP32", (4,)), TensorSpec("S", "BYTES", (2,)),
                                 TensorSpec("I", "INT8", (-1,))),
        outputs=(TensorSpec("Y", "FP32", (1,)),))
    config = ModelConfig(name="m", source=Path("config.yaml"), max_batch_size=max_batch_size)
    return ServedModel(config, 1, [backend])  # type: ignore[list-item]


MODELS = (served(0), served(8))


def valid_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", model_version="1")
    request.inputs.add(name="A", datatype="FP32", shape=[1, 4])
    request.inputs.add(name="S", datatype="BYTES", shape=[1, 2])
    request.inputs.add(name="I", datatype="INT8", shape=[1, 3])
    request.raw_input_contents.extend([b"\0" * 16, b"\1\0\0\0a\0\0\0\0", b"abc"])
    request.outputs.add(name="Y")
    return request


def peek(data: bytes) -> tuple[str, str] | None:
    try:
        return model_and_version(data)
    except TensorgateError as exc:
        assert exc.http_status == 400 and exc.message
        return None


@FUZZ
@given(data=st.binary(max_size=300))
@example(data=b"\x09\x00")  # a fixed64 field cut short
@example(data=b"\x02\x00")  # field number 0
@example(data=b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")  # a length past 2**63
def test_peek_never_raises_anything_else(data: bytes) -> None:
    peek(data)


@FUZZ
@given(cut=st.integers(0, 200), flip=st.integers(0, 200), byte=st.integers(0, 255))
@example(cut=9, flip=0, byte=9)  # model_name's tag turned into a fixed64 field's
def test_peek_agrees_with_protobuf_on_mutated_requests(cut: int, flip: int, byte: int) -> None:
    data = bytearray(valid_request().SerializeToString())
    if flip < len(data):
        data[flip] = byte
    data = data[: max(cut, 1)] if cut < len(data) else data
    peeked = peek(bytes(data))
    try:
        parsed = pb.ModelInferRequest.FromString(bytes(data))
    except DecodeError:
        return
    if peeked is not None:
        assert peeked == (parsed.model_name, parsed.model_version)


def test_too_many_fields_are_refused_quickly() -> None:
    with pytest.raises(TensorgateError, match=f"more than {MAX_FIELDS} fields"):
        model_and_version(b"\x1a\x00" * (MAX_FIELDS + 1))
    assert model_and_version(b"\x0a\x01m" + b"\x1a\x00" * (MAX_FIELDS - 1)) == ("m", "")


TENSOR = st.fixed_dictionaries({
    "name": st.sampled_from(["A", "S", "I", "B"]), "datatype": DATATYPES, "shape": SHAPES,
}).filter(lambda t: all(-(2**63) <= d < 2**63 for d in t["shape"]))


@FUZZ
@given(tensors=st.lists(TENSOR, max_size=4), raw=st.lists(st.binary(max_size=40), max_size=4),
       contents=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=6),
       outputs=st.lists(st.sampled_from(["Y", "Z"]), max_size=3), batched=st.booleans())
def test_validation_refuses_cleanly(tensors: list[dict], raw: list[bytes], contents: list[int],
                                    outputs: list[str], batched: bool) -> None:
    request = pb.ModelInferRequest(model_name="m")
    for t in tensors:
        tensor = request.inputs.add(**t)
        if contents:
            tensor.contents.int_contents.extend(contents)
    request.raw_input_contents.extend(raw)
    for name in outputs:
        request.outputs.add(name=name)
    try:
        checked = check(InferCall.of(request), MODELS[batched])
    except TensorgateError as exc:
        assert exc.http_status == 400 and exc.message
        return
    assert sum(len(b) for b in checked.inputs) <= 16 * 8 + 4 * 40 + 8 * len(contents)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda r: r.inputs[1].shape.__setitem__(1, 3), "expected shape"),
    (lambda r: r.raw_input_contents.__setitem__(1, b"\xff\0\0\0a"), "runs past the end"),
    (lambda r: r.raw_input_contents.__setitem__(1, b"\1\0\0\0a\0\0"), "truncated BYTES"),
    (lambda r: r.raw_input_contents.__setitem__(1, b"\0\0\0\0"), "needs 2 BYTES elements"),
    (lambda r: r.inputs[2].shape.__setitem__(1, -5), "negative dimension"),
    (lambda r: r.inputs[2].shape.__setitem__(1, 2**62), "dimension over"),
    (lambda r: r.inputs[2].shape.__setitem__(1, 4), "takes 4 bytes, got 3"),
    (lambda r: r.inputs.add(name="A", datatype="FP32", shape=[1, 4]), "raw_input_contents"),
    (lambda r: r.outputs.add(name="Y"), "requested more than once"),
    (lambda r: setattr(r.inputs[0], "datatype", "FP64"), "expected datatype FP32"),
])
def test_named_hostile_grpc_requests(mutate: object, message: str) -> None:
    request = valid_request()
    check(InferCall.of(request), MODELS[True])
    mutate(request)  # type: ignore[operator]
    with pytest.raises(TensorgateError, match=message):
        check(InferCall.of(request), MODELS[True])


def test_duplicated_inputs_are_refused() -> None:
    request = valid_request()
    request.inputs.add(name="A", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(b"\0" * 16)
    with pytest.raises(TensorgateError, match="given twice"):
        check(InferCall.of(request), MODELS[True])


def test_narrow_integer_contents_out_of_range_are_refused() -> None:
    request = valid_request()
    del request.raw_input_contents[:]
    request.inputs[0].contents.fp32_contents.extend([0.0] * 4)
    request.inputs[1].contents.bytes_contents.extend([b"a", b"b"])
    request.inputs[2].contents.int_contents.extend([1, 2, 1000])
    with pytest.raises(TensorgateError, match=r"outside INT8's range -128\.\.127"):
        check(InferCall.of(request), MODELS[True])
    request.inputs[2].contents.int_contents[2] = 127
    assert check(InferCall.of(request), MODELS[True]).inputs[2] == b"\1\2\x7f"
