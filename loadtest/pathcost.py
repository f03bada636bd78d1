"""What Python costs per request in each service, without sockets: the runtime's core path and
the gateway's pipeline and HTTP codec, called in-process on one event loop (digits); and the
runtime's path for tensors in CUDA shared memory, over a stand-in CUDA runtime on the host.

    python -m loadtest.pathcost [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from prometheus_client import CollectorRegistry

from common import regions
from common.proto import grpc_service_pb2 as pb
from common.settings import AuthSettings, GatewaySettings, RuntimeSettings
from gateway.app import Gateway
from gateway.context import RequestContext
from gateway.http_server import HttpTransport, infer_target
from gateway.peek import routing_fields
from loadtest.cases import Case, prepare_repo
from loadtest.host_cuda import HostCuda, regions_with
from runtime.app import Runtime, load_models
from runtime.decode import decode_infer

Call = Callable[[], Awaitable[Any]]
CONCURRENCY = (1, 16)


class StandInUpstream:
    """Answers every call with a fixed digits answer one turn of the loop later, as the lane's
    answer arrives: the gateway's own cost, without the runtime's or the socket's."""

    address = "in-process"
    outstanding = 0

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    async def call(self, name: str, request: object, timeout: float | None) -> bytes:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(future.set_result, self.answer)
        return await future

    async def close(self) -> None:
        return None


async def per_request_us(call: Call, requests: int, concurrency: int) -> float:
    """Mean wall time per request, `concurrency` callers in a loop, after a warm-up."""
    async def caller(count: int) -> None:
        for _ in range(count):
            await call()

    await caller(min(1000, requests))
    started = time.perf_counter()
    await asyncio.gather(*(caller(requests // concurrency) for _ in range(concurrency)))
    return (time.perf_counter() - started) / (requests // concurrency * concurrency) * 1e6


#: A region name as a gateway scopes it (`<owner>/<name>`), and where outputs go in it.
REGION_NAME, OUT_AT = "0123456789abcdef/pathcost", 1 << 15


async def cuda_region_rows(runtime: Runtime, case: Case, requests: int
                           ) -> list[tuple[str, int, float]]:
    """The runtime core with the input (and output) in a CUDA region of a stand-in CUDA runtime
    whose device memory is host memory (loadtest/host_cuda.py): copied to the host when its
    request arrives, as for a model on the CPU, or left where it is and gathered with its
    batch, as a backend on a GPU takes it (here ONNX Runtime's IOBinding on the CPU)."""
    cuda = HostCuda()
    handle, memory = cuda.export(1 << 16)
    runtime.core.regions = regions_with(cuda)
    await runtime.core.regions.cuda.register(REGION_NAME, handle, 0, memory.nbytes)
    template = pb.ModelInferRequest.FromString(case.grpc_body)
    memory[: len(template.raw_input_contents[0])] = np.frombuffer(
        template.raw_input_contents[0], np.uint8)
    model = runtime.core.store.get(case.name, case.version)
    plain = (await runtime.core.infer(decode_infer(case.grpc_body), None)).raw_output_contents[0]
    rows = []
    for gathered, output, what in (
            (False, False, "input in a CUDA region, copied to the host (a model on the CPU)"),
            (True, False, "input in a CUDA region, gathered with its batch (as on a GPU)"),
            (True, True, "input and output in CUDA regions, gathered (as on a GPU)")):
        for backend in model.backends:
            backend.gathers_on_device = gathered  # type: ignore[attr-defined]
        name = model.outputs[0].name if output else None
        payload = region_request(template, name).SerializeToString()
        answer = await runtime.core.infer(decode_infer(payload), None)
        got = memory[OUT_AT : OUT_AT + len(plain)].tobytes() if output else \
            answer.raw_output_contents[0]
        if got != plain:
            raise RuntimeError(f"{what}: the answer differs from the one with the bytes sent")
        call = core_call(runtime, payload)
        rows += [(f"runtime core: {what}", c, await per_request_us(call, requests, c))
                 for c in CONCURRENCY]
    await runtime.core.regions.cuda.unregister(REGION_NAME)
    return rows


def core_call(runtime: Runtime, payload: bytes) -> Call:
    async def call() -> None:
        answer = await runtime.core.infer(decode_infer(payload), None)
        answer.SerializeToString()

    return call


def region_request(template: pb.ModelInferRequest, output: str | None
                   ) -> pb.ModelInferRequest:
    """``template`` (one input) with its input, and the output named, in the region."""
    message = pb.ModelInferRequest()
    message.CopyFrom(template)
    size = len(message.raw_input_contents[0])
    del message.raw_input_contents[:]
    _in_region(message.inputs[0].parameters, 0, size)
    if output is not None:
        # NOTE: room for any digits answer; a region checks only that it fits
        _in_region(message.outputs.add(name=output).parameters, OUT_AT, 1 << 10)
    return message


def _in_region(parameters: Any, offset: int, size: int) -> None:
    parameters[regions.REGION].string_param = REGION_NAME
    parameters[regions.OFFSET].int64_param = offset
    parameters[regions.BYTE_SIZE].int64_param = size


def digits_answer(case: Case) -> bytes:
    response = pb.ModelInferResponse(model_name=case.name, model_version=case.version, id="x")
    response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(np.zeros((1, 10), np.float32).tobytes())
    return response.SerializeToString()


def http_call(transport: HttpTransport, case: Case, binary: bool) -> Call:
    """An infer request as the connection's protocol hands it over (gateway/http_fast.py):
    its target and headers parsed, its body whole; the answer's codec and pipeline run."""
    body = case.binary_body if binary else case.json_body
    headers = [(b"content-type", b"application/octet-stream" if binary else b"application/json"),
               (b"content-length", b"%d" % len(body))]
    if binary:
        headers.append((b"inference-header-content-length", b"%d" % case.binary_header_length))
    target = infer_target("POST", case.http_path)
    assert target is not None, case.http_path

    async def read(_: Any) -> bytes:
        return body

    async def call() -> None:
        status, payload, _ = await transport.answer(target, headers, read)
        if status != 200:
            raise RuntimeError(f"the gateway answered HTTP {status}: {b''.join(payload)[:200]!r}")

    return call


async def measure(requests: int) -> list[tuple[str, int, float]]:
    case = prepare_repo(("digits",))["digits"]
    rows: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        # NOTE: a repository of digits alone: the runtime would load every bench model.
        shutil.copytree(case.directory, Path(tmp) / case.name, symlinks=True)
        settings = RuntimeSettings(model_repository=Path(tmp), listen="", lane="")
        runtime = Runtime(settings, load_models(settings))
        await runtime.start()
        try:
            core = core_call(runtime, case.grpc_body)
            rows += [("runtime core: decode → validate → batch → run → respond", c,
                      await per_request_us(core, requests, c)) for c in CONCURRENCY]
            rows += await cuda_region_rows(runtime, case, requests)
        finally:
            await runtime.stop(grace=1.0)
    gateway = Gateway(GatewaySettings(auth=AuthSettings(enabled=False), runtime_endpoints=(),
                                      metrics_port=-1), CollectorRegistry())
    gateway.router.add(StandInUpstream(digits_answer(case))).admitted = True
    pipeline = gateway.pipeline

    async def grpc_path() -> None:
        model, version, request_id = routing_fields(case.grpc_body)
        call = RequestContext(model, version, "grpc", {}, request_id, 10.0)
        await pipeline.infer(call, case.grpc_body)

    transport = HttpTransport(pipeline, gateway.settings.max_message_bytes)
    for name, call in (("gateway pipeline (gRPC: bytes in, bytes out)", grpc_path),
                       ("gateway HTTP binary: codec + pipeline", http_call(transport, case, True)),
                       ("gateway HTTP JSON: codec + pipeline", http_call(transport, case, False))):
        rows += [(name, c, await per_request_us(call, requests, c)) for c in CONCURRENCY]
    await gateway.pipeline.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.pathcost", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000,
                        help="requests per measurement (20000)")
    args = parser.parse_args(argv)
    rows = uvloop.run(measure(max(CONCURRENCY[-1], args.requests)))
    print("| stage (digits, in-process) | callers | µs per request |\n|---|---:|---:|")
    for name, concurrency, micros in rows:
        print(f"| {name} | {concurrency} | {micros:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
