"""The runtime's answers by reference: large outputs go through its arena, small ones and those
that find the arena full go by value (the work is done), and RELEASE frees the slots."""

from __future__ import annotations

import asyncio
from typing import Any

from common import lane
from common.arena import Arena
from common.proto import grpc_service_pb2 as pb
from runtime.core import RuntimeCore
from runtime.lane_server import Greeting, LaneServer
from runtime.model import ModelStore


class Transport:
    def __init__(self) -> None:
        self.written: list[Any] = []

    def writelines(self, parts: list[Any]) -> None:
        self.written += [bytes(part) for part in parts]


def response(size: int) -> pb.ModelInferResponse:
    answer = pb.ModelInferResponse(model_name="m", model_version="1")
    answer.outputs.add(name="OUTPUT0", datatype="UINT8", shape=[size])
    answer.raw_output_contents.append(bytes(range(256)) * (size // 256))
    return answer


def test_outputs_go_by_reference_until_the_arena_is_full_then_by_value() -> None:
    async def go() -> None:
        arena = Arena(64 * 1024, "tensorgate-test")
        server = LaneServer(RuntimeCore(ModelStore(), {}), 1 << 20, Greeting(out=arena))
        transport = Transport()
        server.connection_made(transport)
        assert server._send_refs(1, response(40 * 1024))  # fits: by reference
        assert arena.slots.used == 40 * 1024
        assert not server._send_refs(2, response(40 * 1024))  # full: the caller sends it
        assert not server._send_refs(3, response(1024))  # small: by value
        server.flush()
        # One frame left: the header, the table of refs, the response without its outputs.
        assert len(transport.written) == 3
        assert lane.HEADER.unpack_from(transport.written[0])[1:3] == (1, lane.OK_REF)
        refs, rest = lane.parse_refs(b"".join(transport.written[1:]))
        assert refs == [(0, 40 * 1024)] and not pb.ModelInferResponse.FromString(
            rest).raw_output_contents
        offsets = lane.OFFSET.pack(0) + lane.OFFSET.pack(12345)  # one live, one never taken
        server._release(offsets)
        assert arena.slots.used == 0 and not arena.slots.live
        server.connection_lost(None)

    asyncio.run(go())
