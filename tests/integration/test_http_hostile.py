"""The HTTP edge against hostile clients (issue 21): auth before the body, deadlines for slow and
silent clients, header and connection caps, and request fields that cannot be echoed."""

from __future__ import annotations

import gzip
import http.client
import json
import math
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http

from common.settings import AuthSettings, GatewaySettings, to_json
from loadtest import faults
from tests.integration.conftest import ROOT, Background, Servers

SECRET = "a-test-secret-for-hs256-tokens-32-bytes"
LIMIT = 8 * 1024 * 1024
CEILING_S = 60.0  # NOTE: generous: these wait for a state, never for a fixed time
GOOD = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64],
                                 "data": [0.5] * 64}]})
#: Inflates to one byte more than LIMIT from about 8 KiB.
BOMB = gzip.compress(b"\0" * (LIMIT + 1))


def bearer() -> str:
    return "Bearer " + jwt.encode({"sub": "probe", "exp": time.time() + 3600}, SECRET, "HS256")


@pytest.fixture(scope="module")
def guarded() -> Iterator[Servers]:
    """Auth on (HS256 JWTs), an 8 MiB body limit and short HTTP deadlines."""
    with Background(ROOT / "models", auth=AuthSettings(jwt_secret=SECRET),
                    max_message_bytes=LIMIT, http_header_timeout_s=1.0,
                    http_body_timeout_s=2.0, http_keep_alive_s=1.0,
                    http_max_header_bytes=16 * 1024) as running:
        yield running


def connect(servers: Servers) -> socket.socket:
    host, port = servers.gateway_http.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=CEILING_S)


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by CEILING_S)."""
    received: list[bytes] = []
    ends = time.monotonic() + CEILING_S
    while time.monotonic() < ends:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(received)
        received.append(chunk)
    raise AssertionError("the server kept the connection open")


def post(address: str, path: str, body: bytes,
         headers: list[tuple[str, str]] | None = None) -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=CEILING_S)
    try:
        conn.putrequest("POST", path)
        for name, value in [*(headers or []), ("Content-Length", str(len(body)))]:
            conn.putheader(name, value)
        conn.endheaders(body)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def error_of(answer: bytes) -> str:
    return str(orjson.loads(answer)["error"])


# Row 4: auth, admission and size limits on headers alone, before the body.

def test_probe_04_a_gzip_bomb_without_a_key_is_refused_401_before_inflating(
        guarded: Servers) -> None:
    status, answer = post(guarded.gateway_http, "/v2/models/digits/infer", BOMB,
                          [("Content-Encoding", "gzip")])
    assert status == 401 and "missing credential" in error_of(answer)


def test_probe_04_a_caller_without_a_key_is_answered_on_its_headers_alone(
        guarded: Servers) -> None:
    with connect(guarded) as sock:
        # NOTE: a megabyte announced and never sent: only an answer on the headers comes back.
        sock.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1048576\r\n\r\n")
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 401 ")


def test_a_gzip_bomb_with_a_key_is_refused_at_the_limit(guarded: Servers) -> None:
    status, answer = post(guarded.gateway_http, "/v2/models/digits/infer", BOMB,
                          [("Content-Encoding", "gzip"), ("Authorization", bearer())])
    assert status == 400
    assert error_of(answer) == f"decompressed body exceeds the limit of {LIMIT} bytes"
    status, _ = post(guarded.gateway_http, "/v2/models/digits/infer", gzip.compress(GOOD),
                     [("Content-Encoding", "gzip"), ("Authorization", bearer())])
    assert status == 200


def tensor_bomb(elements: int) -> bytes:
    """A gzip body that inflates to a valid JSON tensor of `elements` numbers (~4 bytes each)."""
    packer = zlib.compressobj(9, wbits=31)
    head = b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,%d],"data":[' % elements
    parts = [packer.compress(head)]
    parts += [packer.compress(b"0.5," * 65536) for _ in range(elements // 65536)]
    parts += [packer.compress(b"0.5," * (elements % 65536 - 1) + b"0.5]}]}"), packer.flush()]
    return b"".join(parts)


def oversized(port: int, key: str | None) -> int:
    """Announce twice the limit, send 64 KiB of it; the answer's status."""
    with socket.create_connection(("127.0.0.1", port), timeout=CEILING_S) as sock:
        auth = f"Authorization: {key}\r\n" if key else ""
        sock.sendall(f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n{auth}"
                     f"Content-Length: {2 * RSS_LIMIT}\r\n\r\n".encode() + b"\0" * 65536)
        return int(sock.recv(65536).split(b" ", 2)[1])


RSS_LIMIT = 32 * 1024 * 1024


def test_probe_04_rss_after_100_rejected_requests_stays_within_20_mib(tmp_path: Path) -> None:
    """A gateway process of its own; RSS measured after a warm-up of every kind, then again
    after 100 refusals: bombs with and without a key, bodies past the limit."""
    settings = GatewaySettings(host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=-1,
                               runtime_endpoints=(f"unix:{tmp_path}/nobody.sock",),
                               auth=AuthSettings(jwt_secret=SECRET), record_answers="off",
                               max_message_bytes=RSS_LIMIT)
    (tmp_path / "gateway.json").write_text(to_json(settings))
    gateway = faults.Process(faults.tensorgate("gateway", "--settings-file",
                                               str(tmp_path / "gateway.json")))
    try:
        port = int(gateway.wait_for(faults.GATEWAY_READY).group(1))
        address, key = f"127.0.0.1:{port}", bearer()
        tensor, zeros = tensor_bomb(4_000_000), gzip.compress(b"\0" * (RSS_LIMIT + 1))
        gzipped = [("Content-Encoding", "gzip")]
        kinds: list[tuple[int, Callable[[], int]]] = [
            (401, lambda: post(address, "/v2/models/digits/infer", tensor, gzipped)[0]),
            (401, lambda: post(address, "/v2/models/digits/infer", zeros, gzipped)[0]),
            (400, lambda: post(address, "/v2/models/digits/infer", zeros,
                               [*gzipped, ("Authorization", key)])[0]),
            (401, lambda: oversized(port, None)),
            (400, lambda: oversized(port, key)),
        ]
        for expected, send in kinds * 2:
            assert send() == expected
        before = faults.rss_mib(gateway.popen.pid)
        for expected, send in kinds * 20:
            assert send() == expected
        after = faults.rss_mib(gateway.popen.pid)
        assert after - before < 20, (before, after)
    finally:
        assert gateway.stop() == 0, gateway.output()


# Row 10: deadlines for slow and silent clients, caps on headers and connections.

def test_probe_10_half_sent_headers_get_408_and_the_connection_closed(guarded: Servers) -> None:
    with connect(guarded) as sock:
        sock.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request headers not received" in answer


def test_probe_10_a_trickled_body_gets_408_and_the_connection_closed(guarded: Servers) -> None:
    with connect(guarded) as sock:
        sock.sendall(f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: {bearer()}\r\nContent-Length: {len(GOOD)}\r\n\r\n"
                     .encode() + GOOD[:10])
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request body not received" in answer


def test_probe_10_a_silent_connection_is_closed(guarded: Servers) -> None:
    with connect(guarded) as sock:
        assert until_closed(sock) == b""


def test_an_idle_keep_alive_connection_is_closed(guarded: Servers) -> None:
    with connect(guarded) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert until_closed(sock).startswith(b"HTTP/1.1 200 ")


def test_probe_10_oversized_headers_get_431(guarded: Servers) -> None:
    with connect(guarded) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Pad: "
                     + b"a" * (32 * 1024) + b"\r\n\r\n")
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"exceed 16384 bytes" in answer


def test_probe_10_connections_past_the_cap_get_503() -> None:
    with Background(ROOT / "models", http_max_connections=4, http_keep_alive_s=600.0) as capped:
        held = [connect(capped) for _ in range(4)]
        try:
            for sock in held:  # NOTE: answered, so the server has surely counted each one
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            with connect(capped) as extra:
                answer = until_closed(extra)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"4 connections" in answer
        finally:
            for sock in held:
                sock.close()


# Row 11: request fields that cannot be echoed or parsed as documented.

def test_probe_11_an_id_with_cr_lf_is_refused_400(servers: Servers) -> None:
    body = orjson.dumps({**orjson.loads(GOOD), "id": "a\r\nX-Injected: 1"})
    status, answer = post(servers.gateway_http, "/v2/models/digits/infer", body)
    assert status == 400 and "without control characters" in error_of(answer)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/models/dig%00its/infer"), ("GET", "/v2/models/dig%00its/ready"),
    ("POST", "/v2/models/digits/versions/1%00/infer"),
    ("POST", "/v2/repository/models/dig%00its/load")])
def test_probe_11_a_nul_in_a_path_name_is_refused_400(servers: Servers, method: str,
                                                       path: str) -> None:
    host, port = servers.gateway_http.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=CEILING_S)
    try:
        conn.request(method, path, body=GOOD if method == "POST" else None)
        reply = conn.getresponse()
        status, answer = reply.status, reply.read()
    finally:
        conn.close()
    assert status == 400 and "must be" in error_of(answer) and "\\x00" in error_of(answer)


def test_probe_11_data_one_level_too_deep_is_refused_400(servers: Servers) -> None:
    body = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64],
                                     "data": [[[0.5] * 64]]}]})
    status, answer = post(servers.gateway_http, "/v2/models/digits/infer", body)
    assert status == 400 and "nested deeper than shape [1, 64]" in error_of(answer)


def test_probe_11_a_parameter_of_2_to_the_70_is_refused_400(servers: Servers) -> None:
    body = GOOD[:-1] + b',"parameters":{"big":1180591620717411303424}}'
    status, answer = post(servers.gateway_http, "/v2/models/digits/infer", body)
    assert status == 400 and "within 64 bits" in error_of(answer)


def test_probe_11_nan_outputs_come_back_as_nan_not_null(servers: Servers) -> None:
    nan = np.full((1, 64), np.nan, "<f4").tobytes()
    header = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64],
                                       "parameters": {"binary_data_size": len(nan)}}]})
    status, answer = post(servers.gateway_http, "/v2/models/digits/infer", header + nan,
                          [("Inference-Header-Content-Length", str(len(header)))])
    assert status == 200
    data = json.loads(answer)["outputs"][0]["data"]
    assert data and all(isinstance(v, float) and math.isnan(v) for v in data), data
    client = triton_http.InferenceServerClient(servers.gateway_http)
    tensor = triton_http.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.full((1, 64), np.nan, np.float32))
    wanted = triton_http.InferRequestedOutput("OUTPUT0", binary_data=False)
    result = client.infer("digits", [tensor], outputs=[wanted])
    assert all(math.isnan(v) for v in result.get_response()["outputs"][0]["data"])


def test_probe_11_two_authorization_headers_are_refused_401(servers: Servers) -> None:
    status, answer = post(servers.gateway_http, "/v2/models/digits/infer", GOOD,
                          [("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    assert status == 401 and "header 'authorization' sent 2 times" in error_of(answer)
