"""The gRPC edge under hostile callers: refused calls leave no memory, idle connections close,
a call without a whole message is answered at once."""

from __future__ import annotations

import contextlib
import gzip
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from common.proto import grpc_service_pb2 as pb
from common.registry import Registry
from common.settings import GrpcSettings
from tests.integration.conftest import Background, Servers
from tests.integration.h2frames import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    frame,
    header_block,
    string,
)

ROOT = Path(__file__).resolve().parents[2]
INFER = "/inference.GRPCInferenceService/ModelInfer"
GATEWAY_READY = re.compile(r"tensorgate-gateway ready http=(\d+) grpc=(\d+)")
LIMITS = GrpcSettings(idle_timeout_s=0.5, max_streams=7, handshake_timeout_s=2.0)
MAX_MESSAGE = 1 << 20
MIB = 1 << 20
CEILING_S = 60.0


@pytest.fixture(scope="module")
def limited() -> Iterator[Servers]:
    """A gateway with small connection limits and a 1 MiB message limit, no auth."""
    with Background(ROOT / "models", grpc=LIMITS, max_message_bytes=MAX_MESSAGE) as running:
        yield running


@pytest.fixture(scope="module")
def gateway_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, str]]:
    """A `tensorgate gateway` process with auth on: (pid, gRPC port, an API key)."""
    registry = tmp_path_factory.mktemp("hostile") / "registry.db"
    with Registry(registry) as store:
        _, secret = store.create_key("probe", "infer")
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorgate", "gateway", "--host", "127.0.0.1", "--http-port",
         "0", "--grpc-port", "0", "--metrics-port", "-1", "--runtime", "127.0.0.1:9",
         "--registry", str(registry), "--model-repository", str(ROOT / "models")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        ready = None
        for line in process.stdout:  # ends when the process does
            ready = GATEWAY_READY.search(line)
            if ready:
                break
        assert ready, "the gateway did not announce itself"
        yield process.pid, int(ready.group(2)), secret
    finally:
        process.kill()
        process.wait(30)


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match, status
    return int(match.group(1)) / 1024


def settled_rss(pid: int, below: float, nudge: Callable[[], object]) -> float:
    """The process's RSS once it is under `below` MiB, or whatever it is after the ceiling.
    Trims run a second after a large or refused call; `nudge` (a small refused call) asks for
    another, in case data the last trim should have freed was still arriving then."""
    deadline = time.monotonic() + CEILING_S
    while (rss := rss_mib(pid)) >= below and time.monotonic() < deadline:
        nudge()
        time.sleep(0.5)
    return rss


def refused(call: grpc.UnaryUnaryMultiCallable, message: bytes, **options: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(message, timeout=CEILING_S, **options)
    return caught.value


def test_probe_05_refused_big_calls_leave_no_memory_behind(
        gateway_process: tuple[int, int, str]) -> None:
    pid, port, secret = gateway_process
    inflating = b"\x0a\x00" * (8 * MIB)  # 16 MiB of empty fields; gzip makes it ~16 KiB
    plain = b"\x0a\x00" * (8 * MIB)
    keyed = (("authorization", f"Bearer {secret}"),)
    gzipped = grpc.Compression.Gzip
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call = channel.unary_unary(INFER)

        def poke() -> None:  # a small call refused for want of a key
            with contextlib.suppress(grpc.RpcError):
                call(b"", timeout=CEILING_S)

        for _ in range(2):  # warm-up: grpc's and the allocator's first-use costs
            refused(call, plain)
            refused(call, inflating, compression=gzipped, metadata=keyed)
        before = rss_mib(pid)
        unkeyed = [refused(call, message, compression=compression)
                   for _ in range(10) for message, compression in ((inflating, gzipped),
                                                                   (plain, None))]
        unkeyed_rss = settled_rss(pid, before + 20, poke)
        # With a key, the message is read, inflated and refused as malformed.
        malformed = [refused(call, inflating, compression=gzipped, metadata=keyed)
                     for _ in range(10)]
        malformed_rss = settled_rss(pid, before + 20, poke)
    grown = f"RSS {before:.0f} MiB, then {unkeyed_rss:.0f}, then {malformed_rss:.0f}"
    assert unkeyed_rss - before < 20 and malformed_rss - before < 20, grown
    for error in unkeyed:  # the credential was checked first: the message was never read
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
        assert "missing credential" in (error.details() or "")
    assert {e.code() for e in malformed} == {grpc.StatusCode.INVALID_ARGUMENT}


def test_gzip_is_bounded_by_the_message_limit_as_inflated(limited: Servers) -> None:
    """grpc core checks max_receive_message_length on the inflated message."""
    bomb = b"\x0a\x06digits" + b"\0" * (4 * MAX_MESSAGE)
    with grpc.insecure_channel(limited.gateway_grpc) as channel:
        error = refused(channel.unary_unary(INFER), bomb, compression=grpc.Compression.Gzip)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert len(gzip.compress(bomb)) < MAX_MESSAGE // 10  # the compressed form is small


def test_probe_10_an_idle_connection_is_closed(limited: Servers) -> None:
    states: list[grpc.ChannelConnectivity] = []
    went_idle = threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if grpc.ChannelConnectivity.READY in states and state == grpc.ChannelConnectivity.IDLE:
            went_idle.set()

    with grpc.insecure_channel(limited.gateway_grpc) as channel:
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
        assert pb.ServerLiveResponse.FromString(live(b"", timeout=CEILING_S)).live
        channel.subscribe(watch, try_to_connect=False)
        # The server's GOAWAY after LIMITS.idle_timeout_s takes the channel back to IDLE.
        assert went_idle.wait(CEILING_S), states
        channel.unsubscribe(watch)
        assert pb.ServerLiveResponse.FromString(live(b"", timeout=CEILING_S)).live


def test_probe_10_a_connection_that_never_speaks_is_closed(limited: Servers) -> None:
    # NOTE: grpc's own default closes it after about 60 s; the ceiling here is 15 times the
    # 2 s configured, and well under that.
    ceiling = 15 * LIMITS.handshake_timeout_s
    host, _, port = limited.gateway_grpc.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=ceiling) as sock:
        sock.sendall(PREFACE[:10])  # half a preface, then silence
        deadline = time.monotonic() + ceiling
        while time.monotonic() < deadline and sock.recv(65536):
            pass  # the server's SETTINGS and GOAWAY; b"" once it closes the connection
        assert not sock.recv(65536), "still open after the handshake timeout"


class RawCall:
    """One HTTP/2 connection sending hand-made gRPC frames; reads the answer's frames."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.authority = address
        self.sock = socket.create_connection((host, int(port)), timeout=CEILING_S)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.buffer = b""

    def send(self, extra_headers: bytes, *frames: bytes, end: bool = False) -> None:
        flags = END_HEADERS | (END_STREAM if end else 0)
        block = header_block(self.authority, INFER) + extra_headers
        self.sock.sendall(frame(HEADERS, flags, 1, block) + b"".join(frames))

    def frames(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(kind, flags, stream, payload) as they come, until the connection closes."""
        deadline = time.monotonic() + CEILING_S
        while time.monotonic() < deadline:
            while len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + length:
                    break
                head, self.buffer = self.buffer[:9 + length], self.buffer[9 + length:]
                yield head[3], head[4], int.from_bytes(head[5:9], "big"), head[9:]
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            self.buffer += chunk

    def settings(self) -> dict[int, int]:
        for kind, flags, _, payload in self.frames():
            if kind == SETTINGS and not flags & 1:
                return {int.from_bytes(payload[i:i + 2], "big"):
                        int.from_bytes(payload[i + 2:i + 6], "big")
                        for i in range(0, len(payload), 6)}
        raise AssertionError("no SETTINGS from the server")

    def status(self) -> tuple[int, str]:
        """grpc-status and grpc-message of stream 1 (grpc core sends them as plain literals)."""
        for kind, flags, stream, payload in self.frames():
            if kind == HEADERS and stream == 1 and flags & END_STREAM:
                code = re.search(rb"grpc-status.(\d+)", payload)
                text = re.search(rb"grpc-message.(.*)", payload, re.S)
                assert code, payload
                return int(code.group(1)), (text.group(1) if text else b"").decode("latin-1")
            if kind in (RST_STREAM, GOAWAY):
                raise AssertionError(f"frame {kind} instead of an answer: {payload!r}")
        raise AssertionError("no answer")

    def close(self) -> None:
        self.sock.close()


def test_probe_10_the_connection_limits_reach_the_wire(limited: Servers) -> None:
    raw = RawCall(limited.gateway_grpc)
    try:
        settings = raw.settings()
    finally:
        raw.close()
    assert settings.get(3) == LIMITS.max_streams  # SETTINGS_MAX_CONCURRENT_STREAMS


@pytest.mark.parametrize("body", [None, b"\x00\x00\x00\x00\x64" + b"\x0a\x06digits"],
                         ids=["no-message", "cut-short"])
def test_probe_11_a_call_without_a_whole_message_is_answered_at_once(
        limited: Servers, body: bytes | None) -> None:
    raw = RawCall(limited.gateway_grpc)
    try:
        if body is None:
            raw.send(b"", end=True)
        else:
            raw.send(b"", frame(DATA, END_STREAM, 1, body))
        code, message = raw.status()
    finally:
        raw.close()
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0], message
    assert "no request message" in message


def test_an_unknown_grpc_encoding_is_refused_by_grpc_core(limited: Servers) -> None:
    """grpc core answers INTERNAL before tensorgate's code runs (no option maps it)."""
    raw = RawCall(limited.gateway_grpc)
    message = b"\x0a\x06digits"
    try:
        raw.send(b"\x00" + string("grpc-encoding") + string("snappy"),
                 frame(DATA, END_STREAM, 1, b"\x01" + len(message).to_bytes(4, "big") + message))
        code, text = raw.status()
    finally:
        raw.close()
    assert code == grpc.StatusCode.INTERNAL.value[0]
    assert "grpc-encoding" in text


@pytest.mark.parametrize("request_id", ["a\r\nb", "nul\x00here", "\r\n\r\n"])
def test_a_request_id_with_control_characters_breaks_nothing(
        limited: Servers, request_id: str) -> None:
    request = pb.ModelInferRequest(model_name="digits", id=request_id)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(b"\0" * 256)
    with grpc.insecure_channel(limited.gateway_grpc) as channel:
        infer = channel.unary_unary(INFER)
        answer = pb.ModelInferResponse.FromString(
            infer(request.SerializeToString(), timeout=CEILING_S,
                  metadata=(("x-request-id", request_id.encode().hex()),)))
        assert answer.id == request_id
        assert answer.model_name == "digits"


def speaks(sock: socket.socket) -> bool:
    """Whether the server sends anything before closing the connection."""
    try:
        return len(sock.recv(65536)) > 0
    except ConnectionResetError:
        return False


def test_probe_10_connections_past_the_cap_are_closed() -> None:
    cap = 2
    with Background(ROOT / "models", grpc=GrpcSettings(max_connections=cap)) as running:
        host, _, port = running.gateway_grpc.rpartition(":")
        opened = [socket.create_connection((host, int(port)), timeout=CEILING_S)
                  for _ in range(cap + 2)]
        try:
            for sock in opened:
                sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
            # The server speaks first on a connection it keeps; one past the cap is closed.
            answered = [speaks(sock) for sock in opened]
        finally:
            for sock in opened:
                sock.close()
    assert answered == [True] * cap + [False] * 2
