"""The lane's hello: a real runtime worker refuses a gateway of another version (or one that sends
no hello), a real gateway end refuses a runtime of another version; both name both versions."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common import lane
from common.arena import Arena
from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from common.settings import RuntimeSettings
from gateway.lane_client import LaneUpstream
from runtime.app import Runtime
from runtime.model import ModelStore


class Runtimes:
    """Two runtime workers with no models, one on a unix lane, one on a TCP lane."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.workers = [self.run(self._start(lane)) for lane in (
            f"unix:{folder}/lane.sock", "127.0.0.1:0")]

    async def _start(self, address: str) -> Runtime:
        runtime = Runtime(RuntimeSettings(listen="127.0.0.1:0", lane=address, threads=1),
                          ModelStore())
        await runtime.start()
        return runtime

    def run(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)  # type: ignore[arg-type]

    def connect(self, which: str) -> socket.socket:
        address = self.workers[0 if which == "unix" else 1].lane_address  # type: ignore[attr-defined]
        if which == "unix":
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(address[5:])
        else:
            host, _, port = address.rpartition(":")
            sock = socket.create_connection((host, int(port)))
        sock.settimeout(60)
        return sock


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtimes]:
    running = Runtimes(tmp_path_factory.mktemp("hello"))
    yield running
    for worker in running.workers:
        running.run(worker.stop(grace=1.0))  # type: ignore[attr-defined]
    running.loop.call_soon_threadsafe(running.loop.stop)
    running.thread.join(30)


def read_frame(sock: socket.socket) -> lane.Frame:
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            assert chunk, "the runtime closed the connection mid-frame"
            data += chunk
        return data

    size, call_id, kind, timeout = lane.HEADER.unpack(exactly(lane.HEADER.size))
    return call_id, kind, timeout, exactly(size)


def assert_refused(sock: socket.socket, call_id: int, versions: tuple[str, str]) -> None:
    got_id, kind, _, payload = read_frame(sock)
    error = lane.parse_error(payload)
    assert (got_id, kind, error.code) == (call_id, lane.ERROR, grpc.StatusCode.UNAVAILABLE)
    assert f"the gateway speaks lane version {versions[0]}" in error.message
    assert f"the runtime worker lane version {versions[1]}" in error.message
    assert "run the same tensorgate release on both sides" in error.message
    assert sock.recv(1) == b""  # and closed


@pytest.mark.parametrize("which", ["unix", "tcp"])
def test_a_gateway_of_another_version_is_refused(runtimes: Runtimes, which: str) -> None:
    with runtimes.connect(which) as sock:
        sock.sendall(lane.hello({"offers": []}, version=99))
        assert_refused(sock, 0, ("99", str(lane.VERSION)))


@pytest.mark.parametrize("which", ["unix", "tcp"])
def test_a_gateway_that_sends_no_hello_is_refused(runtimes: Runtimes, which: str) -> None:
    with runtimes.connect(which) as sock:
        payload = pb.ServerReadyRequest().SerializeToString()
        sock.sendall(lane.header(5, lane.METHOD_KIND["ServerReady"], len(payload)) + payload)
        assert_refused(sock, 5, ("1 (it sent no hello)", str(lane.VERSION)))


@pytest.mark.parametrize("which", ["unix", "tcp"])
def test_a_silent_peer_is_dropped(runtimes: Runtimes, monkeypatch: pytest.MonkeyPatch,
                                  which: str) -> None:
    monkeypatch.setattr(lane, "HELLO_TIMEOUT_S", 0.2)
    with runtimes.connect(which) as sock:
        assert sock.recv(1) == b""


@pytest.mark.parametrize("which", ["unix", "tcp"])
def test_a_gateway_of_this_release_is_served_with_or_without_an_arena(
        runtimes: Runtimes, which: str) -> None:
    address = runtimes.workers[0 if which == "unix" else 1].lane_address  # type: ignore[attr-defined]

    async def ready() -> bool:
        upstream = LaneUpstream(address, 1 << 20)  # no arena: everything by value
        try:
            answer = await upstream.call("ServerReady", b"", 30.0)
            assert upstream._connection is not None and upstream._connection.answers is None
            return pb.ServerReadyResponse.FromString(answer).ready
        finally:
            await upstream.close()

    assert asyncio.run(ready())


def test_a_reference_past_the_arena_is_refused(runtimes: Runtimes) -> None:
    arena = Arena(1 << 16, "tensorgate-test")
    try:
        with runtimes.connect("unix") as sock:
            socket.send_fds(sock, [lane.hello({"offers": ["arena"], "arena_bytes": arena.size})],
                            [arena.fd])
            _, kind, _, payload = read_frame(sock)
            assert kind == lane.HELLO and lane.parse_hello(payload)[1]["accepts"] == ["arena"]
            rest = pb.ModelInferRequest(model_name="any").SerializeToString()
            sock.sendall(b"".join(lane.refs_frame(9, lane.INFER_REF, [(60000, 10000)], rest)))
            call_id, kind, _, payload = read_frame(sock)
            error = lane.parse_error(payload)
            assert (call_id, kind, error.code) == (9, lane.ERROR,
                                                   grpc.StatusCode.INVALID_ARGUMENT)
            assert "past the end of the arena: offset 60000 + length 10000 > 65536" in \
                error.message
    finally:
        arena.close()


class FakeRuntime:
    """A runtime worker of another release: answers the first frame with ``answer``."""

    def __init__(self, folder: Path, answer: bytes) -> None:
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(folder / "fake.sock"))
        self.server.listen()
        self.server.settimeout(60)
        self.address = f"unix:{folder}/fake.sock"
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.server, self.server.accept()[0] as conn:
            conn.settimeout(60)
            read_frame(conn)
            conn.sendall(self.answer)
            conn.recv(1)  # until the gateway closes


def error_frame(error: TensorgateError) -> bytes:
    """What a runtime before the hello answers it with: an unknown call kind."""
    payload = lane.error_payload(error)
    return lane.header(0, lane.ERROR, len(payload)) + payload


@pytest.mark.parametrize("answer, runtime_side", [
    (lane.hello({"accepts": []}, version=99), "version 99"),
    (error_frame(TensorgateError(grpc.StatusCode.INVALID_ARGUMENT,
                                 "unknown lane call kind 255")),
     "version 1 (it answered the hello: unknown lane call kind 255)"),
], ids=["newer", "older"])
def test_a_runtime_of_another_version_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, answer: bytes,
        runtime_side: str) -> None:
    fake = FakeRuntime(tmp_path, answer)

    async def call() -> None:
        upstream = LaneUpstream(fake.address, 1 << 20)
        try:
            await upstream.call("ServerReady", b"", 30.0)
        finally:
            await upstream.close()

    with caplog.at_level(logging.ERROR, "tensorgate.gateway"), \
            pytest.raises(TensorgateError) as caught:
        asyncio.run(call())
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    expected = f"the gateway speaks lane version {lane.VERSION}, the runtime worker lane " \
               f"{runtime_side}; run the same tensorgate release on both sides"
    assert expected in caught.value.message
    assert expected in caplog.text
    fake.thread.join(30)
