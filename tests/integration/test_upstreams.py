"""The gateway in front of other upstreams: any OIP gRPC server, and a worker that is gone."""

from __future__ import annotations

import asyncio
import socket

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from common.settings import AuthSettings, GatewaySettings
from gateway.app import Gateway
from tests.integration.conftest import Servers

NO_AUTH = AuthSettings(enabled=False)


def infer_bytes(rows: int = 1) -> bytes:
    request = pb.ModelInferRequest(model_name="digits", model_version="1")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[rows, 64])
    request.raw_input_contents.append(np.zeros((rows, 64), "<f4").tobytes())
    return request.SerializeToString()


async def call_through(endpoint: str) -> bytes:
    gateway = Gateway(GatewaySettings(host="127.0.0.1", http_port=0, grpc_port=0, auth=NO_AUTH,
                                      metrics_port=-1, runtime_endpoints=(endpoint,)),
                      registry=CollectorRegistry())
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            return await call(infer_bytes(2), timeout=10)
    finally:
        await gateway.stop(grace=0.5)


def test_a_grpc_upstream_serves_like_the_lane(servers: Servers) -> None:
    answer = pb.ModelInferResponse.FromString(
        asyncio.run(call_through(f"grpc://{servers.runtime_grpc}")))
    assert answer.model_name == "digits" and list(answer.outputs[0].shape) == [2, 10]


def test_a_worker_that_is_gone_answers_unavailable_at_once() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(call_through(f"127.0.0.1:{port}"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details() or ""
    # NOTE: the caller learns that a worker is unavailable, never where it listens.
    assert "runtime worker is unavailable" in details and str(port) not in details, details


def test_lane_upstream_reports_unavailable_as_the_error_type() -> None:
    from gateway.lane_client import LaneUpstream

    async def go() -> None:
        upstream = LaneUpstream("unix:/nonexistent/lane.sock", 1024)
        with pytest.raises(TensorgateError) as caught:
            await upstream.call("ModelInfer", b"", 1.0)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert upstream.outstanding == 0

    asyncio.run(go())


def test_a_lane_call_past_its_deadline_fails_and_is_forgotten() -> None:
    from common import lane
    from gateway.lane_client import LaneUpstream

    async def go() -> None:
        # A listener that answers the hello, then nothing: the gateway's own deadline must fire.
        async def greet_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = lane.HEADER.unpack(await reader.readexactly(lane.HEADER.size))[0]
            await reader.readexactly(size)
            writer.write(lane.hello({"accepts": []}))

        server = await asyncio.start_server(greet_only, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        upstream = LaneUpstream(f"127.0.0.1:{port}", 1024)
        with pytest.raises(TensorgateError) as caught:
            await upstream.call("ModelInfer", b"", 0.05)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert upstream._connection is not None and not upstream._connection.pending
        await upstream.close()
        server.close()

    asyncio.run(go())


def test_lane_deadlines_fire_each_at_its_own_time_and_answered_calls_are_forgotten() -> None:
    from common import lane
    from gateway.lane_client import LaneUpstream

    async def go() -> None:
        # Answers the hello, then only calls whose payload is b"answer", at once.
        async def selective(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    size, call_id, kind, _ = lane.HEADER.unpack(
                        await reader.readexactly(lane.HEADER.size))
                    payload = await reader.readexactly(size)
                except asyncio.IncompleteReadError:  # the gateway closed the lane
                    writer.close()
                    return
                if kind == lane.HELLO:
                    writer.write(lane.hello({"accepts": []}))
                elif payload == b"answer":
                    writer.write(lane.header(call_id, lane.OK, 2) + b"ok")

        server = await asyncio.start_server(selective, "127.0.0.1", 0)
        upstream = LaneUpstream(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", 1024)
        loop = asyncio.get_running_loop()
        started = loop.time()
        long = asyncio.ensure_future(upstream.call("ModelInfer", b"", 5.0))
        short = asyncio.ensure_future(upstream.call("ModelInfer", b"", 0.05))
        assert await upstream.call("ModelInfer", b"answer", 30.0) == b"ok"
        with pytest.raises(TensorgateError, match=r"within 0\.050s") as caught:
            await short  # armed after the longer one's: it fires first all the same
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - started < 4.0 and not long.done()
        connection = upstream._connection
        assert connection is not None and next(iter(connection.deadlines.values()))[1] == 5.0
        assert len(connection.deadlines) == len(connection.pending) == 1
        long.cancel()  # nobody waits any more: its entry goes at its deadline, or its answer
        await asyncio.wait_for(asyncio.gather(long, return_exceptions=True), 30.0)
        await upstream.close()
        server.close()
        await server.wait_closed()

    asyncio.run(go())
