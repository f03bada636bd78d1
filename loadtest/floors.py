"""The do-nothing servers, the floors every served path is compared with:

- ``python -m loadtest.floors grpc --listen HOST:PORT``: a ``grpc.aio`` server whose ModelInfer
  answers a fixed ModelInferResponse through a generic handler (bytes in, bytes out);
- ``python -m loadtest.floors http --listen HOST:PORT``: a bare ASGI app on uvicorn with
  httptools and uvloop that reads the body, parses its JSON (the JSON header only, for binary
  tensors) with orjson and answers a fixed OIP infer response;

both with the gateway's garbage-collector threshold (common/gc_tuning.py); ``--processes N``
serves one port from N such processes (SO_REUSEPORT), as ``tensorgate gateway --processes N``
does; and what the benches send them and how they check the answers (``floor_target``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import orjson
import uvloop

from common.gc_tuning import tune_collector
from common.memory import GATEWAY_TUNED, tune_allocator
from common.proto import grpc_service_pb2 as pb
from loadtest.cases import METHOD, SERVICE, Case, post
from loadtest.inturn import Check
from loadtest.loadgen import Target
from tensorgate.roles import stop_event

FLOOR_READY = "floor serving on"
_OUTPUT = np.full(10, 0.1, dtype=np.float32)


def grpc_answer() -> bytes:
    """The gRPC floor's fixed answer: a digits-shaped ModelInferResponse (10 FP32)."""
    response = pb.ModelInferResponse(model_name="digits", model_version="1", id="")
    response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(_OUTPUT.tobytes())
    return response.SerializeToString()


def http_answer() -> bytes:
    """The HTTP floor's fixed answer: a digits-shaped OIP JSON infer response."""
    return orjson.dumps({"model_name": "digits", "model_version": "1", "outputs": [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 10], "data": _OUTPUT.tolist()}]})


def floor_target(protocol: str, address: str, case: Case) -> tuple[Target, Check]:
    """What the load sends to a do-nothing server, and its answer check."""
    if protocol == "grpc":
        return (Target("grpc", address, METHOD, case.grpc_body,
                       answer_size=len(grpc_answer()) + 5), _floor_grpc_check(address, case))
    headers = (("Content-Type", "application/json"),)
    return (Target("http", address, case.http_path, case.json_body, headers),
            _floor_http_check(address, case))


def _floor_grpc_check(address: str, case: Case) -> Check:
    def check() -> None:
        with grpc.insecure_channel(address) as channel:
            pb.ModelInferResponse.FromString(channel.unary_unary(METHOD)(case.grpc_body,
                                                                         timeout=30))
    return check


def _floor_http_check(address: str, case: Case) -> Check:
    def check() -> None:
        status, _, body = post(address, case.http_path, case.json_body,
                               {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"HTTP floor answered {status}: {body[:200]!r}")
    return check


async def serve_grpc(listen: str, ready: str) -> None:
    tune_allocator(GATEWAY_TUNED)  # as the gateway does, before grpc's threads start
    answer = grpc_answer()

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}),))
    port = server.add_insecure_port(listen)
    await server.start()
    tune_collector()  # as the gateway and runtime do: the floors run on the same settings
    stop = stop_event()
    _ready(ready, f"{FLOOR_READY} {listen.rpartition(':')[0]}:{port}")
    await stop.wait()
    await server.stop(1.0)


Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def asgi_app() -> Callable[[dict[str, Any], Receive, Send], Any]:
    answer = http_answer()
    start = {"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]}
    body = {"type": "http.response.body", "body": answer}

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        data = b"".join(chunks)
        for name, value in scope["headers"]:
            if name == b"inference-header-content-length":
                data = data[:int(value)]
        orjson.loads(data)
        await send(start)
        await send(body)

    return app


def serve_http(listen: str, ready: str) -> None:
    import uvicorn

    host, _, port = listen.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    sock.listen(2048)
    config = uvicorn.Config(asgi_app(), loop="uvloop", http="httptools", lifespan="off",
                            access_log=False, log_level="warning")
    tune_collector()
    tune_allocator(GATEWAY_TUNED)
    _ready(ready, f"{FLOOR_READY} {host}:{sock.getsockname()[1]}")
    # NOTE: uvicorn raises the signal that stopped it again once it is done; as SystemExit
    # (a clean stop, as the gRPC floor's), this floor's siblings are stopped on the way out.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _exit)
    uvicorn.Server(config).run(sockets=[sock])


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _ready(where: str, line: str) -> None:
    """Say so on stderr (the log the benches watch), or on stdout to the process that started
    this one as a sibling."""
    print(line, file=sys.stdout if where == "stdout" else sys.stderr, flush=True)


@contextlib.contextmanager
def siblings(protocol: str, listen: str, count: int) -> Iterator[None]:
    """`count` more floors on the same port, each serving before this returns; stopped (SIGTERM)
    on the way out."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):  # NOTE: all started before any is waited for: they start together
            started.append(subprocess.Popen(
                [sys.executable, "-m", "loadtest.floors", protocol, "--listen", listen,
                 "--ready-on", "stdout"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE))
        for sibling in started:
            assert sibling.stdout is not None
            if FLOOR_READY not in sibling.stdout.readline().decode(errors="replace"):
                raise SystemExit(f"a sibling floor on {listen} exited before serving "
                                 f"(code {sibling.wait()}); its errors are above")
        yield
    finally:
        for sibling in started:
            sibling.terminate()
        for sibling in started:
            sibling.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol", choices=["grpc", "http"])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--processes", type=int, default=1,
                        help="processes serving the port, as the gateway's --processes (1)")
    parser.add_argument("--ready-on", choices=["stderr", "stdout"], default="stderr",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.processes > 1 and args.listen.endswith(":0"):
        parser.error("--processes above 1 needs a fixed port in --listen")
    with siblings(args.protocol, args.listen, args.processes - 1):
        if args.protocol == "grpc":
            uvloop.run(serve_grpc(args.listen, args.ready_on))
        else:
            serve_http(args.listen, args.ready_on)


if __name__ == "__main__":
    main()
