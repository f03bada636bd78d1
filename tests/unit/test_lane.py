"""The lane's frames: cut from any chunking of the stream, errors carried with their code."""

from __future__ import annotations

import grpc
import pytest

from common import lane
from common.errors import TensorgateError


def stream(*frames: tuple[int, int, bytes, int]) -> bytes:
    return b"".join(lane.header(call_id, kind, len(payload), timeout) + payload
                    for call_id, kind, payload, timeout in frames)


def test_frames_survive_any_chunking() -> None:
    data = stream((1, 0, b"hello", 0), (2, 3, b"", 5), (3**30, 8, b"x" * 1000, 2**32 - 1))
    expected = [(1, 0, 0, b"hello"), (2, 3, 5, b""), (3**30, 8, 2**32 - 1, b"x" * 1000)]
    for step in (1, 7, 17, len(data)):
        reader = lane.FrameReader(max_payload=4096)
        got = []
        for start in range(0, len(data), step):
            got += reader.feed(data[start : start + step])
        assert got == expected
        assert not reader.buffer


def test_an_oversized_frame_is_refused() -> None:
    reader = lane.FrameReader(max_payload=10)
    with pytest.raises(ValueError, match="exceeds the limit of 10"):
        reader.feed(stream((1, 0, b"x" * 11, 0)))


def feed_buffer(frames: lane.FrameBuffer, data: bytes, step: int) -> list[lane.Frame]:
    """Write ``data`` as the kernel would: at most ``step`` bytes into each buffer asked for."""
    got: list[lane.Frame] = []
    offset = 0
    while offset < len(data):
        target = frames.get_buffer()
        count = min(step, len(target), len(data) - offset)
        assert count > 0, "the buffer offered has no room"
        target[:count] = data[offset : offset + count]
        offset += count
        got += frames.received(count)
    return got


LARGE = lane.DIRECT_FROM_BYTES


@pytest.mark.parametrize("step", [1, 13, 4096, 70_000, 10**7])
def test_frame_buffer_cuts_frames_from_any_chunking(step: int) -> None:
    payloads = [b"a" * 10, bytes(range(256)) * (LARGE // 256 + 3), b"", b"b" * 500,
                b"c" * (3 * LARGE), b"d" * 20]
    data = stream(*((i, i % 3, p, i * 7) for i, p in enumerate(payloads)))
    frames = lane.FrameBuffer(max_payload=4 * LARGE, window=1 + step % 5000)
    got = feed_buffer(frames, data, step if step > 1 else 997)
    assert [(c, k, t, bytes(p)) for c, k, t, p in got] == \
        [(i, i % 3, i * 7, p) for i, p in enumerate(payloads)]
    assert frames.filled == 0 and frames.large is None


def test_a_large_payload_is_received_into_its_own_buffer() -> None:
    payload = b"x" * (2 * LARGE)
    frames = lane.FrameBuffer(max_payload=4 * LARGE)
    got = feed_buffer(frames, stream((5, 0, payload, 0)), 8192)
    assert len(got) == 1 and isinstance(got[0][3], memoryview) and got[0][3] == payload
    small = feed_buffer(frames, stream((6, 0, b"small", 0)), 8192)
    assert small == [(6, 0, 0, b"small")] and isinstance(small[0][3], bytes)


def test_frame_buffer_refuses_an_oversized_frame() -> None:
    frames = lane.FrameBuffer(max_payload=10)
    with pytest.raises(ValueError, match="exceeds the limit of 10"):
        feed_buffer(frames, stream((1, 0, b"x" * 11, 0)), 100)


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_errors_round_trip_with_their_code(code: grpc.StatusCode) -> None:
    error = lane.parse_error(lane.error_payload(TensorgateError(code, "model 'm': bad — ü")))
    assert error.code == code and error.message == "model 'm': bad — ü"


def test_timeouts_are_microseconds_and_zero_means_none() -> None:
    assert lane.timeout_us(None) == 0
    assert lane.timeout_us(0.0000001) == 1
    assert lane.timeout_us(2.5) == 2_500_000
    assert lane.timeout_us(1e9) == lane.MAX_TIMEOUT_US
