"""The gateway's lane writes: the calls of one loop turn leave in writes of at most FLUSH_CALLS
(the runtime starts on the first while the gateway reads the rest), the remainder when the
turn ends, and every answer still finds its call."""

from __future__ import annotations

from typing import Any

from common import lane
from gateway.lane_client import FLUSH_CALLS, _Connection
from tests.waiting import until_async

KIND = lane.METHOD_KIND["ModelInfer"]


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writelines(self, parts: list[Any]) -> None:
        self.writes.append(b"".join(bytes(part) for part in parts))


def call_ids(data: bytes) -> list[int]:
    found, at = [], 0
    while at < len(data):
        size, call_id, kind, _ = lane.HEADER.unpack_from(data, at)
        assert kind == KIND
        found.append(call_id)
        at += lane.HEADER.size + size
    return found


def connected() -> tuple[_Connection, Transport]:
    connection = _Connection("test", 1 << 20, greeted=True)
    transport = Transport()
    connection.connection_made(transport)
    return connection, transport


async def test_a_busy_turn_is_written_in_pieces_and_the_rest_when_it_ends() -> None:
    connection, transport = connected()
    count = 2 * FLUSH_CALLS + 3
    futures = [connection.send(KIND, b"request %d" % n, None) for n in range(count)]

    # Within the turn: the first two pieces have left already.
    assert [call_ids(w) for w in transport.writes] == [
        list(range(1, FLUSH_CALLS + 1)), list(range(FLUSH_CALLS + 1, 2 * FLUSH_CALLS + 1))]

    await until_async(lambda: len(transport.writes) == 3, "the turn's last calls written")
    assert call_ids(transport.writes[2]) == list(range(2 * FLUSH_CALLS + 1, count + 1))

    answers = b"".join(lane.header(n, lane.OK, 7) + b"ok %04d" % n for n in range(count, 0, -1))
    connection.data_received(answers)
    assert [f.result() for f in futures] == [b"ok %04d" % n for n in range(1, count + 1)]


async def test_a_quiet_turn_is_one_write_when_it_ends() -> None:
    connection, transport = connected()
    for n in range(FLUSH_CALLS - 1):
        connection.send(KIND, b"request %d" % n, None)
    assert transport.writes == []
    await until_async(lambda: transport.writes, "the turn's calls written")
    assert [call_ids(w) for w in transport.writes] == [list(range(1, FLUSH_CALLS))]
