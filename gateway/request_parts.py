"""A ModelInferRequest held as two parts: its other fields, serialized, and its raw input tensors
as views (of an HTTP body), so each tensor is copied once, where it goes (a lane's arena)."""

from __future__ import annotations

from dataclasses import dataclass

from common.wire import LENGTH_DELIMITED, Buffer, WireError, encode_varint, fields

RAW_INPUT_CONTENTS = 7  # ModelInferRequest's field number
RAW_INPUT_TAG = bytes([RAW_INPUT_CONTENTS << 3 | LENGTH_DELIMITED])
#: Requests and answers this large are worth keeping in parts; smaller ones cost less whole
#: (one protobuf call instead of Python walking their fields).
SPLIT_FROM_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Parts:
    """``head``: every field but raw_input_contents; ``tensors``: those, in order. Protobuf reads
    a message's fields in any order, so the message is ``head`` with the tensors appended."""

    head: bytes
    tensors: tuple[Buffer, ...]

    def __add__(self, field: bytes) -> Parts:
        """A serialized field appended to the head (what gateway/rewrite.py does to bytes)."""
        return Parts(self.head + field, self.tensors)

    def __len__(self) -> int:
        return len(self.head) + sum(1 + len(encode_varint(len(t))) + len(t) for t in self.tensors)

    def pieces(self) -> list[Buffer]:
        """The message as pieces to write in turn (no tensor copied)."""
        out: list[Buffer] = [self.head]
        for tensor in self.tensors:
            out += [RAW_INPUT_TAG, encode_varint(len(tensor)), tensor]
        return out

    def join(self) -> bytes:
        """The whole serialized message (one copy of each tensor)."""
        return b"".join(self.pieces())


#: A serialized ModelInferRequest, whole or in parts.
Request = bytes | Parts


def whole(request: Request) -> bytes:
    """The request as one serialized message."""
    return request if isinstance(request, bytes) else request.join()


def detached(request: Request) -> Request:
    """The request with tensors of its own where they were views of memory given back when its
    call ends (an HTTP body in the lane arena): for a copy that may outlive it, a shadow's."""
    if isinstance(request, bytes) or all(
            type(tensor) is bytes or type(getattr(tensor, "obj", None)) is bytes
            for tensor in request.tensors):
        return request
    return Parts(request.head, tuple(bytes(tensor) for tensor in request.tensors))


def from_head(head: bytes, tensors: list[Buffer]) -> Request:
    """A request's serialized fields but its raw inputs, and those: Parts when they are large,
    else whole bytes (a small HTTP body's may be in ``head`` already, with none given)."""
    if not tensors:
        return head
    parts = Parts(head, tuple(tensors))
    return parts.join() if sum(map(len, tensors)) < SPLIT_FROM_BYTES else parts


#: More raw inputs than this and a request stays whole (the runtime's decoder names what is
#: wrong): far above any model's inputs, and a bound on the views made per call.
MAX_TENSORS = 1024


def parts_of(request: bytes) -> Request:
    """A whole request as Parts (views of it; only its small fields joined); ``request`` itself
    when it is not a protobuf message (the runtime's decoder names what is wrong)."""
    view = memoryview(request)
    # NOTE: spans, adjacent ones merged, not a view per field: a hostile message of 65,536 tiny
    # fields would otherwise leave megabytes of small objects fragmenting the heap per call.
    kept: list[tuple[int, int]] = []
    tensors: list[Buffer] = []
    try:
        for number, wire, start, value, end in fields(view):
            if number == RAW_INPUT_CONTENTS and wire == LENGTH_DELIMITED:
                if len(tensors) == MAX_TENSORS:
                    return request
                tensors.append(view[value:end])
            elif kept and kept[-1][1] == start:
                kept[-1] = (kept[-1][0], end)
            else:
                kept.append((start, end))
    except WireError:
        return request
    head = b"".join(view[start:end] for start, end in kept)
    return Parts(head, tuple(tensors))
