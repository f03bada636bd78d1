"""An HTTP infer body written into the lane arena as it arrives, so its tensors go to a runtime
on this host by their place in the arena: the gateway neither joins the body nor copies them."""

from __future__ import annotations

from common.arena import ALIGN, Arena
from common.names import is_whole
from gateway.context import Headers
from gateway.lane_refs import BY_REF_FROM_BYTES

#: Bodies may hold at most this share of the arena: requests whose tensors are copied in at
#: send time (gRPC's, gzipped bodies) always find the rest, and slow senders cannot fill it.
BODY_SHARE = 0.5


class BodySlot:
    """A slot of the arena that one body is written into; ``release`` once its call has ended."""

    __slots__ = ("arena", "at", "base", "end", "start")

    def __init__(self, arena: Arena, start: int, base: int, size: int) -> None:
        self.arena = arena
        self.start = start
        #: Where the body's first byte goes: its binary part then starts on a slot boundary.
        self.base = self.at = base
        self.end = base + size

    def write(self, chunk: bytes) -> bool:
        """Append a piece of the body; False (nothing written) past its declared length."""
        at = self.at
        end = at + len(chunk)
        if end > self.end:
            return False
        self.arena.view[at:end] = chunk
        self.at = end
        return True

    def due(self) -> int:
        """Bytes of the body still to come."""
        return self.end - self.at

    def rest(self) -> memoryview:
        """Where the body's bytes still to come go: a read may land there (then `landed`)."""
        return self.arena.view[self.at : self.end]

    def landed(self, size: int) -> None:
        self.at += size

    def body(self) -> memoryview:
        """The body as written so far (all of it, once its last piece arrived)."""
        return self.arena.view[self.base : self.at]

    def release(self) -> None:
        self.arena.release(self.start)


def place(arena: Arena | None, headers: Headers, encoding: str) -> BodySlot | None:
    """A slot for this body, or None where it is better read into memory: no arena, a body
    compressed or of unknown length, binary tensors too small to go by reference, or the
    bodies' share of the arena taken."""
    if arena is None or encoding != "identity":
        return None
    declared = headers.get("content-length")
    json_length = headers.get("inference-header-content-length")
    if declared is None or json_length is None or not is_whole(declared) or not is_whole(
            json_length):
        return None
    size, header = int(declared), int(json_length)
    if size - header < BY_REF_FROM_BYTES:
        return None  # NOTE: also a header longer than the body: the codec says what is wrong
    pad = -header % ALIGN
    if arena.slots.used + pad + size > arena.size * BODY_SHARE:
        return None
    start = arena.alloc(pad + size)
    return None if start is None else BodySlot(arena, start, start + pad, size)
