"""The lane arena: its allocator (alloc, free, full, fragmentation), its memfd and a peer's
read-only mapping of it, and by-reference frames turned back into the bytes sent by value."""

from __future__ import annotations

import os
import random

import pytest

from common import lane
from common.arena import ALIGN, Allocator, Arena, Mapping
from common.proto import grpc_service_pb2 as pb
from gateway import lane_refs


def test_slots_are_aligned_and_distinct_until_the_arena_is_full() -> None:
    slots = Allocator(10 * ALIGN)
    taken = [slots.alloc(ALIGN + 1) for _ in range(5)]  # each takes two lines
    assert taken == [0, 2 * ALIGN, 4 * ALIGN, 6 * ALIGN, 8 * ALIGN]
    assert slots.alloc(1) is None and slots.used == 10 * ALIGN and len(slots.live) == 5
    assert slots.release(4 * ALIGN) and slots.alloc(2 * ALIGN) == 4 * ALIGN


def test_a_slot_freed_twice_or_never_taken_changes_nothing() -> None:
    slots = Allocator(4 * ALIGN)
    start = slots.alloc(10)
    assert start is not None and slots.release(start)
    assert not slots.release(start) and not slots.release(ALIGN)
    assert slots.free == [(0, 4 * ALIGN)] and slots.used == 0


def test_freed_neighbours_merge_so_mixed_sizes_never_strand_the_arena() -> None:
    size = 256 * ALIGN
    slots = Allocator(size)
    rng = random.Random(7)
    live: list[int] = []
    for _ in range(5000):
        if live and (rng.random() < 0.5 or slots.used > size // 2):
            assert slots.release(live.pop(rng.randrange(len(live))))
        else:
            start = slots.alloc(rng.choice((1, ALIGN, 5 * ALIGN, 17 * ALIGN)))
            if start is not None:
                live.append(start)
    for start in live:
        slots.release(start)
    assert slots.free == [(0, size)] and slots.used == 0 and not slots.live
    assert slots.alloc(size) == 0  # the whole arena in one slot again


def test_a_peer_maps_the_arena_read_only_and_refs_past_it_are_refused() -> None:
    arena = Arena(1 << 16, "tensorgate-test")
    try:
        start = arena.alloc(5)
        assert start is not None
        arena.view[start : start + 5] = b"hello"
        peer = Mapping(os.dup(arena.fd), arena.size)
        assert bytes(peer.slice(start, 5)) == b"hello"
        with pytest.raises(TypeError):
            peer.view[0:1] = b"x"
        with pytest.raises(ValueError, match="past the end of the arena: offset 65535"):
            peer.slice(65535, 2)
        peer.close()
    finally:
        arena.close()


def test_a_peer_refuses_an_unsealed_or_short_memfd() -> None:
    fd = os.memfd_create("tensorgate-test")
    os.ftruncate(fd, 4096)
    with pytest.raises(ValueError, match="not sealed"):
        Mapping(fd, 4096)
    arena = Arena(4096, "tensorgate-test")
    try:
        with pytest.raises(ValueError, match="smaller than the 8192 bytes"):
            Mapping(os.dup(arena.fd), 8192)
    finally:
        arena.close()


def test_an_answer_by_reference_becomes_the_bytes_sent_by_value() -> None:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="x")
    response.outputs.add(name="A", datatype="FP32", shape=[1, 40000])
    response.outputs.add(name="B", datatype="UINT8", shape=[0])
    pieces = [os.urandom(160000), b""]
    response.raw_output_contents.extend(pieces)
    by_value = response.SerializeToString()
    arena = Arena(1 << 20, "tensorgate-test")
    try:
        start = arena.alloc(len(pieces[0]) + ALIGN)
        assert start is not None
        arena.view[start : start + len(pieces[0])] = pieces[0]
        del response.raw_output_contents[:]
        refs = [(start, len(pieces[0])), (start + len(pieces[0]), 0)]
        frame = lane.refs_frame(1, lane.OK_REF, refs, response.SerializeToString())
        payload = b"".join(frame)[lane.HEADER.size:]
        peer = Mapping(os.dup(arena.fd), arena.size)
        assert lane_refs.response_bytes(payload, peer) == (by_value, start)
        peer.close()
    finally:
        arena.close()


def test_hellos_carry_the_version_and_mismatches_name_both() -> None:
    frame = lane.hello({"offers": ["arena"]}, version=7)
    size, call_id, kind, _ = lane.HEADER.unpack_from(frame)
    assert (call_id, kind, size) == (0, lane.HELLO, len(frame) - lane.HEADER.size)
    assert lane.parse_hello(frame[lane.HEADER.size:]) == (7, {"offers": ["arena"]})
    with pytest.raises(ValueError):
        lane.parse_hello(b"\x01")
    text = lane.mismatch(2, 3)
    assert "version 2" in text and "version 3" in text and "same tensorgate release" in text


def test_malformed_reference_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold 5 refs"):
        lane.parse_refs(lane.refs_table([(0, 1)])[:4].replace(b"\x01", b"\x05") + b"x" * 20)


def test_a_view_of_the_arena_is_found_where_it_lies_and_nothing_else_is() -> None:
    arena = Arena(1 << 16, "tensorgate-test-offset")
    try:
        start = arena.alloc(1000)
        assert start is not None
        assert arena.offset_of(arena.view[start + 7 : start + 100]) == start + 7
        assert arena.offset_of(arena.view[start : start]) is None  # empty: nothing to refer to
        assert arena.offset_of(arena.view[start : start + 8].toreadonly()) is None
        assert arena.offset_of(memoryview(bytearray(8))) is None
        assert arena.offset_of(b"12345678") is None
    finally:
        arena.close()
