"""The decode stage: a ModelInferRequest from its wire bytes, its large tensors left in place.

Parsing copies every raw_input_contents into the message, and reading one copies it again; for
an image-sized tensor those copies cost more than the rest of the request's path together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from common.proto import grpc_service_pb2 as pb

#: Below this many bytes the message is parsed whole: scanning its fields in Python costs more
#: than copying them.
SCAN_FROM_BYTES = 64 * 1024
RAW_INPUT_CONTENTS = 7  # ModelInferRequest's field number
_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class InferCall:
    """One inference request: ``message`` for everything but the tensors' bytes, ``raw`` for
    those (views into the received buffer when it was large)."""

    message: pb.ModelInferRequest
    raw: Sequence[Buffer]

    @classmethod
    def of(cls, message: pb.ModelInferRequest) -> InferCall:
        return cls(message, message.raw_input_contents)


def decode_infer(payload: Buffer) -> InferCall:
    """Raise DecodeError for bytes that are not a ModelInferRequest."""
    if len(payload) < SCAN_FROM_BYTES:
        return InferCall.of(pb.ModelInferRequest.FromString(payload))
    view = memoryview(payload)
    kept, raw = _split(view)
    rest = view[kept[0][0]:kept[0][1]] if len(kept) == 1 else b"".join(
        view[start:end] for start, end in kept)
    return InferCall(pb.ModelInferRequest.FromString(rest), raw)


def _split(view: memoryview) -> tuple[list[tuple[int, int]], list[memoryview]]:
    """The spans of every top-level field but raw_input_contents, and views of those."""
    kept: list[tuple[int, int]] = []
    raw: list[memoryview] = []
    offset, end = 0, len(view)
    while offset < end:
        start = offset
        key, offset = _varint(view, offset)
        wire = key & 7
        if wire == _LENGTH_DELIMITED:
            size, offset = _varint(view, offset)
            if offset + size > end:
                raise DecodeError("truncated length-delimited field")
            if key >> 3 == RAW_INPUT_CONTENTS:
                raw.append(view[offset:offset + size])
            offset += size
        elif wire == _VARINT:
            _, offset = _varint(view, offset)
        elif wire in (_FIXED64, _FIXED32):
            offset += 8 if wire == _FIXED64 else 4
        else:
            raise DecodeError(f"unexpected wire type {wire}")
        if key >> 3 != RAW_INPUT_CONTENTS:
            if kept and kept[-1][1] == start:
                kept[-1] = (kept[-1][0], offset)
            else:
                kept.append((start, offset))
    if offset > end:
        raise DecodeError("truncated field")
    return kept or [(0, 0)], raw


def _varint(view: memoryview, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(view) or shift > 63:
            raise DecodeError("truncated or overlong varint")
        byte = view[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7
