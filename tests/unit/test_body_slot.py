"""An HTTP body written into the lane arena: when it is placed there, how it is written, and
its tensors sent by their place (no slot, no copy), while a shadow's copy gets its own bytes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from common import lane
from common.arena import ALIGN, Arena
from gateway import lane_refs
from gateway.body_slot import BODY_SHARE, place
from gateway.http_codec import decode_infer_parts
from gateway.request_parts import Parts, detached, from_head

SIZE = 1 << 20
DATA = bytes(range(256)) * 128  # 32 KiB: large enough to go by reference
HEADER = (b'{"inputs":[{"name":"INPUT0","datatype":"UINT8","shape":[%d],'
          b'"parameters":{"binary_data_size":%d}}]}' % (len(DATA), len(DATA)))


def headers(body: int = len(HEADER) + len(DATA), json: int | None = len(HEADER)) -> dict:
    out = {"content-length": str(body)}
    if json is not None:
        out["inference-header-content-length"] = str(json)
    return out


@pytest.fixture
def arena() -> Iterator[Arena]:
    made = Arena(SIZE, "tensorgate-test-body")
    yield made
    made.close()


def test_a_large_binary_body_gets_a_slot_whose_binary_part_starts_aligned(arena: Arena) -> None:
    slot = place(arena, headers(), "identity")
    assert slot is not None
    assert (slot.base + len(HEADER)) % ALIGN == 0 and slot.base - slot.start < ALIGN
    assert slot.write(HEADER + DATA[:100]) and slot.write(DATA[100:])
    assert bytes(slot.body()) == HEADER + DATA
    assert not slot.write(b"x")  # past the declared length: nothing written
    assert bytes(slot.body()) == HEADER + DATA
    slot.release()
    assert arena.slots.used == 0


@pytest.mark.parametrize(("why", "given", "encoding"), [
    ("gzipped", headers(), "gzip"),
    ("no binary part", headers(json=None), "identity"),
    ("no length", {"inference-header-content-length": str(len(HEADER))}, "identity"),
    ("length not a number", headers() | {"content-length": "12x"}, "identity"),
    ("binary part small", headers(body=len(HEADER) + 1000), "identity"),
    ("header past the body", headers(json=len(HEADER) + len(DATA) + 1), "identity"),
])
def test_other_bodies_are_read_into_memory(arena: Arena, why: str, given: dict,
                                           encoding: str) -> None:
    assert place(arena, given, encoding) is None, why
    assert place(None, headers(), "identity") is None
    assert arena.slots.used == 0


def test_bodies_take_at_most_their_share_of_the_arena(arena: Arena) -> None:
    big = int(SIZE * BODY_SHARE) - 4 * ALIGN
    first = place(arena, headers(body=big, json=0), "identity")
    assert first is not None
    assert place(arena, headers(body=8 * ALIGN + 16 * 1024, json=0), "identity") is None
    first.release()
    assert place(arena, headers(body=8 * ALIGN + 16 * 1024, json=0), "identity") is not None


class Sent:
    """A lane connection that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, list[Any]]] = []

    def send_parts(self, kind: int, parts: list[Any], size: int, timeout: float | None) -> Any:
        self.frames.append((kind, parts))
        return None


def body_in(arena: Arena) -> tuple[Any, Any]:
    slot = place(arena, headers(), "identity")
    assert slot is not None and slot.write(HEADER + DATA)
    message, tensors, _ = decode_infer_parts(slot.body(), len(HEADER), "m", "")
    return slot, from_head(message.SerializeToString(), tensors)


def test_tensors_of_a_body_in_the_arena_go_by_their_place_with_no_slot(arena: Arena) -> None:
    slot, request = body_in(arena)
    assert isinstance(request, Parts)
    used = arena.slots.used
    sent = Sent()
    _, taken = lane_refs.send_infer(sent, arena, request, 5.0)
    assert taken is None and arena.slots.used == used  # nothing copied, no slot taken
    kind, parts = sent.frames[0]
    refs, _ = lane.parse_refs(b"".join(bytes(p) for p in parts))
    assert kind == lane.INFER_REF and refs == [(slot.base + len(HEADER), len(DATA))]
    assert bytes(arena.view[refs[0][0] : refs[0][0] + len(DATA)]) == DATA
    slot.release()


def test_tensors_elsewhere_are_copied_into_a_slot_of_their_own(arena: Arena) -> None:
    request = Parts(b"", (memoryview(DATA),))
    _, taken = lane_refs.send_infer(Sent(), arena, request, 5.0)
    assert taken is not None and bytes(arena.view[taken : taken + len(DATA)]) == DATA


def test_a_shadow_copy_owns_its_tensors_once_the_body_slot_is_reused(arena: Arena) -> None:
    slot, request = body_in(arena)
    copy = detached(request)
    assert isinstance(copy, Parts) and copy.tensors[0] == DATA
    slot.release()
    again = arena.alloc(SIZE // 2)
    assert again is not None
    arena.view[again : again + SIZE // 2] = b"\xff" * (SIZE // 2)
    assert copy.tensors[0] == DATA
    grpc_like = Parts(b"", (memoryview(DATA)[:10],))
    assert detached(grpc_like) is grpc_like  # views of bytes live as long as they are held
