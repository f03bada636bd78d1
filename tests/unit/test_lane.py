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


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_errors_round_trip_with_their_code(code: grpc.StatusCode) -> None:
    error = lane.parse_error(lane.error_payload(TensorgateError(code, "model 'm': bad — ü")))
    assert error.code == code and error.message == "model 'm': bad — ü"


def test_timeouts_are_microseconds_and_zero_means_none() -> None:
    assert lane.timeout_us(None) == 0
    assert lane.timeout_us(0.0000001) == 1
    assert lane.timeout_us(2.5) == 2_500_000
    assert lane.timeout_us(1e9) == lane.MAX_TIMEOUT_US
