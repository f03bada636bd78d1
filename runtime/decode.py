"""The decode stage: a ModelInferRequest from its wire bytes, its large tensors left in place.

Parsing copies every raw_input_contents into the message, and reading one copies it again; for
an image-sized tensor those copies cost more than the rest of the request's path together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from common import lane
from common.arena import Mapping
from common.proto import grpc_service_pb2 as pb
from common.regions import MARK
from common.wire import LENGTH_DELIMITED, Buffer, WireError, fields
from runtime.device_rows import DeviceSpan, Hold, Part

#: Below this many bytes the message is parsed whole: scanning its fields in Python costs more
#: than copying them.
SCAN_FROM_BYTES = 64 * 1024
RAW_INPUT_CONTENTS = 7  # ModelInferRequest's field number


@dataclass(slots=True)
class InferCall:
    """One inference request: ``message`` for everything but the tensors' bytes, ``raw`` for
    those (views into the received buffer when it was large)."""

    message: pb.ModelInferRequest
    #: One entry per raw_input_contents; once shared-memory regions are resolved, one per
    #: input (None for an input given as contents; a DeviceSpan for one left in a CUDA region).
    raw: Sequence[Part | None]
    #: Some tensor names a shared-memory region (a cheap look at the bytes: may be a false
    #: positive, never a false negative).
    shm: bool = False
    #: Some input is a DeviceSpan (its batch is gathered on the GPU), or `places` is set.
    device: bool = False
    #: Outputs wanted in CUDA regions: name → span; the executor writes them there.
    places: dict[str, DeviceSpan] | None = None
    #: Set with `device`: whether its batch still runs, for the regions' release.
    hold: Hold | None = None

    @classmethod
    def of(cls, message: pb.ModelInferRequest, shm: bool = False) -> InferCall:
        return cls(message, message.raw_input_contents, shm)


def decode_infer(payload: Buffer) -> InferCall:
    """Raise DecodeError for bytes that are not a ModelInferRequest."""
    if len(payload) < SCAN_FROM_BYTES:
        message = pb.ModelInferRequest.FromString(payload)
        # NOTE: a memoryview's `in` compares items, not bytes: one that small is copied first.
        shm = MARK in (payload if type(payload) is bytes else bytes(payload))
        return InferCall(message, message.raw_input_contents, shm)
    view = memoryview(payload)
    kept, raw = _split(view)
    rest = bytes(view[kept[0][0]:kept[0][1]]) if len(kept) == 1 else b"".join(
        view[start:end] for start, end in kept)
    return InferCall(pb.ModelInferRequest.FromString(rest), raw, MARK in rest)


def _split(view: memoryview) -> tuple[list[tuple[int, int]], list[memoryview]]:
    """The spans of every top-level field but raw_input_contents, and views of those."""
    kept: list[tuple[int, int]] = []
    raw: list[memoryview] = []
    try:
        for number, wire, start, value, end in fields(view):
            if number == RAW_INPUT_CONTENTS and wire == LENGTH_DELIMITED:
                raw.append(view[value:end])
            elif kept and kept[-1][1] == start:
                kept[-1] = (kept[-1][0], end)
            else:
                kept.append((start, end))
    except WireError as exc:
        raise DecodeError(str(exc)) from None
    return kept or [(0, 0)], raw


def decode_infer_refs(payload: Buffer, arena: Mapping | None) -> InferCall:
    """A by-reference ModelInfer (lane.INFER_REF): the message's other fields in the frame, its
    tensors' bytes read in place from the gateway's arena. ValueError for a reference past the
    arena, DecodeError for a malformed message."""
    if arena is None:
        raise ValueError("a by-reference request on a lane connection with no arena")
    refs, rest = lane.parse_refs(payload)
    message = pb.ModelInferRequest.FromString(rest)
    if message.raw_input_contents:
        raise ValueError("a by-reference request also carries raw_input_contents")
    return InferCall(message, [arena.slice(start, length) for start, length in refs])
