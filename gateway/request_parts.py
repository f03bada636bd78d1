"""A ModelInferRequest held as two parts: its other fields, serialized, and its raw input tensors
as views (of an HTTP body), so each tensor is copied once, where it goes (a lane's arena)."""

from __future__ import annotations

from dataclasses import dataclass

from common.wire import LENGTH_DELIMITED, Buffer

#: ModelInferRequest.raw_input_contents (field 7), length-delimited.
RAW_INPUT_TAG = bytes([7 << 3 | LENGTH_DELIMITED])


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
        return len(self.head) + sum(1 + len(varint(len(t))) + len(t) for t in self.tensors)

    def pieces(self) -> list[Buffer]:
        """The message as pieces to write in turn (no tensor copied)."""
        out: list[Buffer] = [self.head]
        for tensor in self.tensors:
            out += [RAW_INPUT_TAG, varint(len(tensor)), tensor]
        return out

    def join(self) -> bytes:
        """The whole serialized message (one copy of each tensor)."""
        return b"".join(self.pieces())


#: A serialized ModelInferRequest, whole or in parts.
Request = bytes | Parts


def whole(request: Request) -> bytes:
    """The request as one serialized message."""
    return request if isinstance(request, bytes) else request.join()


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
