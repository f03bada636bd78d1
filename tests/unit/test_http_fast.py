"""HTTP infer served straight from the protocol (gateway/http_fast.py): a real uvicorn server on
127.0.0.1 port 0 with GuardedProtocol, raw sockets, and a fake pipeline that echoes, refuses on
headers alone, or hangs until its client goes away."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import grpc
import orjson
import pytest
import uvicorn

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from gateway.context import RequestContext
from gateway.http_fast import JOIN_BELOW, FastInfer
from gateway.http_protocol import HttpLimits, protocol_class
from gateway.http_server import HttpTransport
from gateway.pipeline import Loader, Pipeline
from gateway.request_parts import whole
from tests.unit.http_wire import CEILING_S, Answer, Reader
from tests.waiting import until, until_async

LIMIT = 4 * 1024 * 1024
LIMITS = HttpLimits(header_timeout_s=30.0, body_timeout_s=30.0, max_header_bytes=16 * 1024,
                    max_connections=64)


class FakePipeline:
    """`echo` answers its input as OUT; `slow` too, a little later; `crlf` too, with a version
    that would split the answer's head; `refuse` refuses on the headers (401, its body never
    loaded); `busy` sheds (503, Retry-After); `hang` waits until cancelled."""

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.hanging = threading.Event()
        self.cancelled = threading.Event()

    async def infer(self, call: RequestContext, load: Loader) -> bytes:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._infer(call, load)
        finally:
            self.in_flight -= 1

    async def _infer(self, call: RequestContext, load: Loader) -> bytes:
        if call.model == "refuse":
            raise TensorgateError(grpc.StatusCode.UNAUTHENTICATED, "missing credential")
        if call.model == "busy":
            raise TensorgateError(grpc.StatusCode.UNAVAILABLE, "busy", retry_after=2.5)
        request = pb.ModelInferRequest.FromString(whole(await load(call)))
        self.loaded.append(request.id)
        if call.model == "hang":
            self.hanging.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if call.model == "slow":
            for _ in range(50):  # NOTE: a few loop turns, so a second request could overtake
                await asyncio.sleep(0)
        version = "1\r\nx-injected: 1" if call.model == "crlf" else "1"
        answer = pb.ModelInferResponse(model_name=call.model, model_version=version, id=request.id)
        answer.outputs.add(name="OUT", datatype="UINT8", shape=request.inputs[0].shape)
        answer.raw_output_contents.append(request.raw_input_contents[0])
        return answer.SerializeToString()


class Served:
    """The server on its own event loop in a thread, so blocking sockets can call it."""

    def __init__(self) -> None:
        self.pipeline = FakePipeline()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    async def _start(self) -> None:
        transport = HttpTransport(cast(Pipeline, self.pipeline), LIMIT)
        config = uvicorn.Config(transport, http=protocol_class(LIMITS),  # type: ignore[arg-type]
                                loop="none", lifespan="off", access_log=False,
                                log_level="warning", server_header=False, proxy_headers=False)
        self.server = uvicorn.Server(config)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.task = asyncio.ensure_future(self.server.serve([sock]))
        await until_async(lambda: self.server.started, "the server started", CEILING_S)

    async def _stop(self) -> None:
        self.server.should_exit = True
        await self.task

    def __enter__(self) -> Served:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(CEILING_S)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(CEILING_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(CEILING_S)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with Served() as running:
        yield running


def connect(served: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=CEILING_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def infer_body(data: bytes, request_id: str) -> tuple[bytes, int]:
    """A binary infer body of one UINT8 input, and its JSON header's length."""
    header = orjson.dumps({"id": request_id, "parameters": {"binary_data_output": True},
                           "inputs": [{"name": "IN", "datatype": "UINT8", "shape": [len(data)],
                                       "parameters": {"binary_data_size": len(data)}}]})
    return header + data, len(header)


def infer_request(model: str, data: bytes, request_id: str, extra: bytes = b"",
                  version: bytes = b"HTTP/1.1") -> bytes:
    body, length = infer_body(data, request_id)
    return (b"POST /v2/models/%s/infer %s\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Inference-Header-Content-Length: %d\r\n%s\r\n"
            % (model.encode(), version, len(body), length, extra)) + body


def error_of(answer: Answer) -> str:
    return str(orjson.loads(answer.body)["error"])


def test_pipelined_requests_are_answered_in_order_on_one_connection(served: Served) -> None:
    """A slow infer first, then quicker ones and a control-plane GET: answers keep the order,
    and one connection's requests never run at once."""
    requests = [infer_request("slow", b"\x01" * 10, "a"), infer_request("echo", b"\x02" * 3, "b"),
                b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
                infer_request("refuse", b"\x03", "c"), infer_request("echo", b"\x04" * 7, "d")]
    with connect(served) as sock:
        sock.sendall(b"".join(requests))
        reader = Reader(sock)
        answers = [reader.next() for _ in requests]
    assert [a.status for a in answers] == [200, 200, 200, 401, 200]
    assert [a.headers.get("x-request-id") for a in answers] == ["a", "b", None, None, "d"]
    assert answers[0].output() == b"\x01" * 10 and answers[4].output() == b"\x04" * 7
    assert orjson.loads(answers[2].body) == {"live": True}
    assert served.pipeline.most_in_flight == 1


def test_a_body_in_many_small_pieces_arrives_whole(served: Served) -> None:
    data = bytes(range(256)) * 4
    request = infer_request("echo", data, "trickled")
    with connect(served) as sock:
        for start in range(0, len(request), 7):
            sock.sendall(request[start:start + 7])
        answer = Reader(sock).next()
    assert answer.status == 200 and answer.output() == data


def test_a_chunked_and_gzipped_body_arrives_whole(served: Served) -> None:
    data = bytes(range(256)) * 64
    body, length = infer_body(data, "chunked")
    packed = gzip.compress(body)
    chunks = [packed[i:i + 100] for i in range(0, len(packed), 100)]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    with connect(served) as sock:
        sock.sendall(b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n"
                     b"Inference-Header-Content-Length: %d\r\n\r\n" % length + encoded)
        answer = Reader(sock).next()
    assert answer.status == 200 and answer.output() == data


def test_a_large_answer_comes_back_whole(served: Served) -> None:
    data = bytes(range(256)) * (2 * JOIN_BELOW // 256)  # NOTE: written as parts, not joined
    with connect(served) as sock:
        sock.sendall(infer_request("echo", data, "large"))
        answer = Reader(sock).next()
    assert answer.status == 200 and answer.output() == data
    assert answer.json()["outputs"][0]["parameters"] == {"binary_data_size": len(data)}


def test_a_refused_caller_is_answered_on_its_headers_and_its_body_never_loaded(
        served: Served) -> None:
    loaded = len(served.pipeline.loaded)
    with connect(served) as sock:
        # NOTE: a megabyte announced and none sent: the answer can only come from the headers.
        sock.sendall(b"POST /v2/models/refuse/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1048576\r\nExpect: 100-continue\r\n\r\n")
        answer = Reader(sock).next()
    assert answer.status == 401 and orjson.loads(answer.body) == {"error": "missing credential"}
    assert len(served.pipeline.loaded) == loaded


def test_100_continue_is_sent_once_the_caller_is_admitted(served: Served) -> None:
    body, length = infer_body(b"\x05" * 5, "expect")
    with connect(served) as sock:
        sock.sendall(b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                     b"Inference-Header-Content-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                     % (len(body), length))
        reader = Reader(sock)
        assert reader.next().status == 100
        sock.sendall(body)
        answer = reader.next()
    assert answer.status == 200 and answer.output() == b"\x05" * 5


def test_a_refusal_carries_retry_after_and_the_connection_stays_open(served: Served) -> None:
    with connect(served) as sock:
        sock.sendall(infer_request("busy", b"\x06", "x") + infer_request("echo", b"\x07", "y"))
        reader = Reader(sock)
        busy, echoed = reader.next(), reader.next()
    assert busy.status == 503 and busy.headers["retry-after"] == "3"
    assert echoed.status == 200 and echoed.headers["x-tensorgate-model-version"] == "1"


@pytest.mark.parametrize(("version", "extra"), [(b"HTTP/1.0", b""),
                                                 (b"HTTP/1.1", b"Connection: close\r\n")])
def test_an_answer_without_keep_alive_closes_the_connection(served: Served, version: bytes,
                                                            extra: bytes) -> None:
    with connect(served) as sock:
        sock.sendall(infer_request("echo", b"\x08", "z", extra, version))
        reader = Reader(sock)
        answer = reader.next()
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert reader.closed()


def test_bodies_past_the_limit_are_refused(served: Served) -> None:
    with connect(served) as sock:
        sock.sendall(b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n" % (LIMIT + 1))
        declared = Reader(sock).next()
    assert declared.status == 400
    assert orjson.loads(declared.body)["error"] == (f"request body of {LIMIT + 1} bytes exceeds "
                                                    f"the limit of {LIMIT}")
    piece = b"\0" * 65536
    chunks = b"%x\r\n%s\r\n" % (len(piece), piece) * (LIMIT // len(piece) + 1)
    with connect(served) as sock:
        # NOTE: refused once past the limit; the rest is read and dropped, the connection kept.
        sock.sendall(b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
                     + infer_request("echo", b"\x0a", "after"))
        reader = Reader(sock)
        streamed, after = reader.next(), reader.next()
    assert streamed.status == 400
    assert error_of(streamed) == f"request body exceeds the limit of {LIMIT} bytes"
    assert after.status == 200 and after.output() == b"\x0a"


def test_a_client_gone_before_its_answer_cancels_the_pipeline_call(served: Served) -> None:
    with connect(served) as sock:
        sock.sendall(infer_request("hang", b"\x09", "gone"))
        assert served.pipeline.hanging.wait(CEILING_S)
    assert served.pipeline.cancelled.wait(CEILING_S)
    until(lambda: served.pipeline.in_flight == 0, "every pipeline call settled", CEILING_S)


def test_an_answer_header_with_a_line_break_is_never_written(served: Served) -> None:
    with connect(served) as sock:
        sock.sendall(infer_request("crlf", b"\x0b", "crlf") + infer_request("echo", b"\x0c", "ok"))
        reader = Reader(sock)
        broken, after = reader.next(), reader.next()
    assert broken.status == 500 and "x-injected" not in broken.headers
    assert after.status == 200 and after.output() == b"\x0c"


class FakeFlow:
    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_reading_pauses_until_the_caller_is_admitted_then_takes_the_whole_body() -> None:
    """Before admission a little of the body is buffered, then reading pauses (a refused
    caller costs its headers); read() resumes it and waits for the rest."""

    async def scenario() -> None:
        protocol = SimpleNamespace(flow=FakeFlow(), transport=FakeTransport())
        app = SimpleNamespace(max_body=LIMIT, arena=None)
        request = FastInfer(cast(Any, protocol), cast(Any, app), ("echo", ""), [], True, True)
        piece = b"\1" * 16384
        for _ in range(5):  # NOTE: 80 KiB: past uvicorn's 64 KiB high-water mark
            request.feed(piece)
        assert protocol.flow.paused
        reading = asyncio.ensure_future(request.read({}))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not protocol.flow.paused and not reading.done()
        assert protocol.transport.written == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        request.feed(piece)
        request.complete()
        assert await reading == piece * 6

    asyncio.run(scenario())
