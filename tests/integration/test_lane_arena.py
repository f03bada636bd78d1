"""Tensors by reference on a unix lane: a real runtime worker and real gateways, the `echo` model
(tests/integration/lane_models.py) held by a gate so calls stay in flight while a test looks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from prometheus_client import CollectorRegistry

from common.proto import grpc_service_pb2 as pb
from common.settings import AuthSettings, GatewaySettings, RuntimeSettings
from gateway.app import Gateway
from gateway.http_fast import FastInfer
from gateway.http_protocol import HEAD_READ_BYTES
from loadtest import faults
from loadtest.servers import free_port
from loadtest.sleepy import store_with
from runtime.app import Runtime
from tests.integration.lane_models import WIDTH, echo_model
from tests.unit.http_wire import Reader
from tests.waiting import until

ROOT = Path(__file__).resolve().parents[2]
INFER = "/inference.GRPCInferenceService/ModelInfer"


class Stack:
    """One runtime worker on a unix lane, a gateway with the default arena and one with 1 MiB."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.gate = threading.Event()
        self.gate.set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _start(self) -> None:
        settings = RuntimeSettings(model_repository=ROOT / "models", listen="127.0.0.1:0",
                                   lane=f"unix:{self.folder}/lane.sock", threads=1)
        model, self.backend = echo_model(self.gate)
        self.runtime = Runtime(settings, store_with(settings, model))
        await self.runtime.start()
        self.registries = [CollectorRegistry(), CollectorRegistry()]
        self.gateways = [Gateway(GatewaySettings(
            host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=-1, lane_arena_mb=size,
            runtime_endpoints=(self.runtime.lane_address,), auth=AuthSettings(enabled=False)),
            registry=registry) for size, registry in zip((256, 1), self.registries)]
        for gateway in self.gateways:
            await gateway.start()

    def call(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(120)  # type: ignore[arg-type]

    def slots(self, which: int = 0) -> float:
        return self.registries[which].get_sample_value("tensorgate_lane_arena_slots") or 0.0

    def grpc_port(self, which: int = 0) -> int:
        return self.gateways[which].grpc_port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("lane"))
    running.thread.start()
    running.call(running._start())
    yield running
    running.gate.set()
    for gateway in running.gateways:
        running.call(gateway.stop(grace=1.0))
    running.call(running.runtime.stop(grace=1.0))
    running.loop.call_soon_threadsafe(running.loop.stop)
    running.thread.join(30)


@pytest.fixture(autouse=True)
def gate_open_after(stack: Stack) -> Iterator[None]:
    yield
    stack.gate.set()
    until(lambda: stack.slots(0) == 0 and stack.slots(1) == 0, "every slot free")


def request_bytes(rows: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    x = np.random.default_rng(seed).random((rows, WIDTH), dtype=np.float32)
    message = pb.ModelInferRequest(model_name="echo", id=f"r{seed}")
    message.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    message.raw_input_contents.append(x.tobytes())
    return message.SerializeToString(), x


def raw_call(port: int) -> grpc.UnaryUnaryMultiCallable:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_receive_message_length", 1 << 26), ("grpc.max_send_message_length", 1 << 26)])
    return channel.unary_unary(INFER)


def test_answers_by_reference_are_byte_identical_to_by_value(stack: Stack) -> None:
    body, x = request_bytes(3, seed=1)
    by_value = raw_call(int(stack.runtime.grpc_address.rpartition(":")[2]))(body, timeout=30)
    by_reference = raw_call(stack.grpc_port())(body, timeout=30)
    assert by_reference == by_value
    assert stack.runtime._lanes and all(c.arena is not None for c in stack.runtime._lanes)
    grpc_client = tgrpc.InferenceServerClient(f"127.0.0.1:{stack.grpc_port()}")
    http_client = thttp.InferenceServerClient(f"127.0.0.1:{stack.gateways[0].http_port}")
    for client, kind in ((grpc_client, tgrpc), (http_client, thttp)):
        tensor = kind.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        assert np.array_equal(client.infer("echo", [tensor]).as_numpy("OUTPUT0"), x)
    assert stack.slots() == 0


def test_slots_are_taken_while_calls_are_in_flight_and_freed_by_the_answer(stack: Stack) -> None:
    stack.gate.clear()
    body, x = request_bytes(2, seed=2)
    call = raw_call(stack.grpc_port())
    futures = [call.future(body, timeout=60) for _ in range(3)]
    until(lambda: stack.slots() == 3, "three slots in use")
    assert stack.registries[0].get_sample_value("tensorgate_lane_arena_bytes") >= 3 * x.nbytes
    stack.gate.set()
    for future in futures:
        answer = pb.ModelInferResponse.FromString(future.result(60))
        assert answer.raw_output_contents[0] == x.tobytes()
    until(lambda: stack.slots() == 0, "every slot freed after the answers")


def test_a_cancelled_call_frees_its_slot(stack: Stack) -> None:
    stack.gate.clear()
    future = raw_call(stack.grpc_port()).future(request_bytes(1)[0], timeout=60)
    until(lambda: stack.slots() == 1, "one slot in use")
    future.cancel()
    until(lambda: stack.slots() == 0, "the cancelled call's slot freed")
    assert not stack.gate.is_set()  # freed while the runtime still holds the call


def test_a_call_past_its_deadline_frees_its_slot(stack: Stack) -> None:
    stack.gate.clear()
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(stack.grpc_port())(request_bytes(1)[0], timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    until(lambda: stack.slots() == 0, "the expired call's slot freed")
    assert not stack.gate.is_set()


def test_a_full_arena_refuses_with_retry_after(stack: Stack) -> None:
    stack.gate.clear()
    body, _ = request_bytes(8)  # 256 KiB: the 1 MiB arena holds four
    call = raw_call(stack.grpc_port(1))
    held = [call.future(body, timeout=60) for _ in range(4)]
    until(lambda: stack.slots(1) == 4, "the small arena full")
    with pytest.raises(grpc.RpcError) as caught:
        call(body, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "lane arena is full" in caught.value.details()
    assert dict(caught.value.trailing_metadata()).get("retry-after") == "1"
    status, headers, text = http_binary(stack.gateways[1].http_port, 8)
    assert status == 429 and headers.get("retry-after") == "1", text
    assert "lane arena is full" in text
    stack.gate.set()
    for future in held:
        future.result(60)


def http_binary(port: int, rows: int) -> tuple[int, dict, str]:
    x = np.zeros((rows, WIDTH), np.float32).tobytes()
    header = (b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[%d,%d],'
              b'"parameters":{"binary_data_size":%d}}]}' % (rows, WIDTH, len(x)))
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/echo/infer", header + x,
        {"Content-Type": "application/octet-stream",
         "Inference-Header-Content-Length": str(len(header))})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, headers, text = answer.status, answer.headers, answer.read()[:200]
    except urllib.error.HTTPError as exc:
        status, headers, text = exc.code, exc.headers, exc.read()
    return status, {k.lower(): v for k, v in headers.items()}, text.decode(errors="replace")


def test_an_http_body_is_written_into_the_arena_and_its_tensor_sent_by_its_place(
        stack: Stack) -> None:
    stack.gate.clear()
    answered: list[tuple[int, dict, str]] = []
    caller = threading.Thread(target=lambda: answered.append(
        http_binary(stack.gateways[0].http_port, 2)))
    caller.start()
    until(lambda: stack.backend.waiting == 1, "the call in the model")
    # NOTE: one slot, the body's: its JSON header too, so larger than the tensor alone
    assert stack.slots() == 1
    held = stack.registries[0].get_sample_value("tensorgate_lane_arena_bytes")
    assert held > 2 * WIDTH * 4
    stack.gate.set()
    caller.join(60)
    assert answered and answered[0][0] == 200, answered


def test_a_client_gone_mid_body_frees_the_slot_its_body_was_written_into(stack: Stack) -> None:
    x = np.zeros((4, WIDTH), np.float32).tobytes()
    header = (b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[4,%d],'
              b'"parameters":{"binary_data_size":%d}}]}' % (WIDTH, len(x)))
    with socket.create_connection(("127.0.0.1", stack.gateways[0].http_port), 30) as sock:
        sock.sendall(b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\nInference-Header-Content-Length: %d\r\n\r\n"
                     % (len(header) + len(x), len(header)) + header + x[: len(x) // 2])
        until(lambda: stack.slots() == 1, "the body's slot taken")
    until(lambda: stack.slots() == 0, "the body's slot freed when its client left")
    assert http_binary(stack.gateways[0].http_port, 4)[0] == 200


def raw_infer(x: np.ndarray, request_id: str) -> bytes:
    data = x.tobytes()
    header = (b'{"id":"%s","parameters":{"binary_data_output":true},"inputs":[{"name":"INPUT0",'
              b'"datatype":"FP32","shape":[%d,%d],"parameters":{"binary_data_size":%d}}]}'
              % (request_id.encode(), *x.shape, len(data)))
    return (b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Inference-Header-Content-Length: %d\r\n\r\n" % (len(header) + len(data),
                                                              len(header))) + header + data


@pytest.fixture(scope="module")
def uvloop_gateway(stack: Stack) -> Iterator[tuple[int, int]]:
    """`tensorgate gateway` on the stack's runtime, on the event loop it serves with (uvloop):
    its HTTP and metrics ports."""
    metrics = free_port()
    gateway = faults.Process(faults.tensorgate(
        "gateway", "--runtime", stack.runtime.lane_address, "--host", "127.0.0.1",
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", str(metrics), "--no-auth",
        "--processes", "1", "--registry", str(stack.folder / "registry-uvloop.db")))
    try:
        yield int(gateway.wait_for(faults.GATEWAY_READY).group(1)), metrics
    finally:
        gateway.popen.kill()
        gateway.popen.wait(30)


def scraped_slots(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as page:
        for line in page.read().decode().splitlines():
            if line.startswith("tensorgate_lane_arena_slots "):
                return float(line.split()[1])
    return 0.0


def send_in_pieces(port: int, wait_for_slot: Callable[[], object]) -> None:
    """A body sent in three pieces, the later two after its slot was taken, with two more
    requests in the last piece's send: answered in order, each with its own tensor."""
    rng = np.random.default_rng(9)
    first, second = (rng.random((n, WIDTH), dtype=np.float32) for n in (4, 2))
    request = raw_infer(first, "first")
    third = len(request) // 3
    with socket.create_connection(("127.0.0.1", port), 30) as sock:
        sock.sendall(request[:third])
        wait_for_slot()
        sock.sendall(request[third : 2 * third])
        sock.sendall(request[2 * third :] + raw_infer(second, "second") + GET_ECHO)
        answered_in_order(sock, {"first": first, "second": second})


GET_ECHO = b"GET /v2/models/echo HTTP/1.1\r\nHost: x\r\n\r\n"


def answered_in_order(sock: socket.socket, sent: dict[str, np.ndarray]) -> None:
    """The answers to the infer requests sent (by id), each with its own tensor, then GET_ECHO's."""
    reader = Reader(sock)
    answers = [reader.next() for _ in range(len(sent) + 1)]
    assert [a.status for a in answers] == [200] * len(answers), [a.body[:200] for a in answers]
    assert [a.headers["x-request-id"] for a in answers[:-1]] == list(sent)
    assert [a.output() for a in answers[:-1]] == [x.tobytes() for x in sent.values()]
    assert orjson.loads(answers[-1].body)["name"] == "echo"


def test_a_body_written_into_its_slot_in_pieces_then_pipelined_requests(stack: Stack) -> None:
    send_in_pieces(stack.gateways[0].http_port,
                   lambda: until(lambda: stack.slots() == 1, "the body's slot taken"))


def test_the_same_on_the_gateways_own_event_loop(uvloop_gateway: tuple[int, int]) -> None:
    port, metrics = uvloop_gateway
    send_in_pieces(port, lambda: until(lambda: scraped_slots(metrics) == 1,
                                       "the body's slot taken"))
    until(lambda: scraped_slots(metrics) == 0, "the body's slot freed")


def send_at_once(port: int) -> None:
    """A large request, a small one and a GET in one send: the large body is read straight into
    its slot, exactly up to its last byte, and the requests behind it are parsed afresh."""
    rng = np.random.default_rng(11)
    large, small = (rng.random((n, WIDTH), dtype=np.float32) for n in (8, 1))
    with socket.create_connection(("127.0.0.1", port), 30) as sock:
        sock.sendall(raw_infer(large, "large") + raw_infer(small, "small") + GET_ECHO)
        answered_in_order(sock, {"large": large, "small": small})


def test_an_admitted_body_is_read_past_the_parser_into_its_slot(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    landed: list[int] = []
    original = FastInfer.landed

    def counted(self: FastInfer, size: int) -> None:
        landed.append(size)
        original(self, size)

    monkeypatch.setattr(FastInfer, "landed", counted)
    send_at_once(stack.gateways[0].http_port)
    body = 8 * WIDTH * 4
    # NOTE: only the first read (headers and a little body) goes through the parser
    assert sum(landed) >= body - HEAD_READ_BYTES, (sum(landed), body)


def test_the_same_at_once_on_the_gateways_own_event_loop(
        uvloop_gateway: tuple[int, int]) -> None:
    port, metrics = uvloop_gateway
    send_at_once(port)
    until(lambda: scraped_slots(metrics) == 0, "the body's slot freed")


def test_a_large_body_refused_on_its_headers_is_drained_and_the_next_request_answered(
        stack: Stack) -> None:
    x = np.ones((8, WIDTH), np.float32)
    refused = raw_infer(x, "refused").replace(b"/v2/models/echo/infer",
                                              b"/v2/models/echo/versions/x1/infer")
    with socket.create_connection(("127.0.0.1", stack.gateways[0].http_port), 30) as sock:
        sock.sendall(refused + raw_infer(x, "next"))
        reader = Reader(sock)
        answers = [reader.next() for _ in range(2)]
    assert [a.status for a in answers] == [400, 200], [a.body[:200] for a in answers]
    assert b"version" in answers[0].body
    assert answers[1].headers["x-request-id"] == "next" and answers[1].output() == x.tobytes()


def mapped_arenas(pid: int) -> int:
    """The runtime's mappings of gateway process ``pid``'s arena."""
    with open("/proc/self/maps") as maps:
        return sum(f"tensorgate-lane-in-{pid}" in line for line in maps)


def test_a_killed_gateways_arena_is_reclaimed_and_the_runtime_serves_on(stack: Stack) -> None:
    gateway = faults.Process(faults.tensorgate(
        "gateway", "--runtime", stack.runtime.lane_address, "--host", "127.0.0.1",
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "-1", "--no-auth",
        "--registry", str(stack.folder / "registry.db")))
    try:
        port = int(gateway.wait_for(faults.GATEWAY_READY).group(2))
        stack.gate.clear()
        held = raw_call(port).future(request_bytes(2)[0], timeout=60)
        pid = gateway.popen.pid
        until(lambda: mapped_arenas(pid) == 1, "the gateway's arena mapped")
        until(lambda: stack.backend.waiting == 1, "its call in the model")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError):
            held.result(60)
        # NOTE: its view of the arena goes when the held batch ends; the mapping with it.
        stack.gate.set()
        until(lambda: mapped_arenas(pid) == 0, "the dead gateway's arena unmapped")
    finally:
        gateway.popen.kill()
        gateway.popen.wait(30)
    body, x = request_bytes(2, seed=5)
    answer = pb.ModelInferResponse.FromString(raw_call(stack.grpc_port())(body, timeout=30))
    assert answer.raw_output_contents[0] == x.tobytes()


def test_a_tcp_lane_keeps_sending_bytes() -> None:
    from common.arena import Arena
    from gateway.lane_client import LaneUpstream

    arena = Arena(1 << 20, "tensorgate-test")
    try:
        assert LaneUpstream("127.0.0.1:8012", 1 << 20, arena=arena).arena is None
        assert LaneUpstream("unix:/tmp/x.sock", 1 << 20, arena=arena).arena is arena
    finally:
        arena.close()


