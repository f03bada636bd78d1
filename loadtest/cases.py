"""The benchmarked models: their repository, one-row requests in each encoding, the in-process
ceiling sweep, and the checks that a served answer matches the in-process one.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from common.datatypes import NUMPY_DTYPES
from common.model_config import load_model_config
from common.proto import grpc_service_pb2 as pb
from runtime.backends.base import Backend

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "loadtest" / ".models"
LOGS = REPO / ".logs"  # a dot folder: the runtime's repository scan skips it
BATCH_SIZES = (1, 8, 16, 32, 64)
MODELS = ("digits", "heavy", "resnet50")
SERVICE = "inference.GRPCInferenceService"
METHOD = f"/{SERVICE}/ModelInfer"
HEADER_LENGTH = "Inference-Header-Content-Length"


def _datatype(row: np.ndarray) -> str:
    return "FP16" if row.dtype == np.float16 else "FP32"


def infer_request(model: str, version: str, row: np.ndarray, rows: int = 1) -> bytes:
    """A serialized ModelInferRequest of ``rows`` copies of ``row``, its tensor in
    raw_input_contents (FP16 when ``row`` is float16, else FP32)."""
    datatype = _datatype(row)
    row = np.tile(np.asarray(row, dtype=NUMPY_DTYPES[datatype]).reshape(1, -1), (rows, 1))
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="INPUT0", datatype=datatype, shape=list(row.shape))
    request.raw_input_contents.append(row.tobytes())
    return request.SerializeToString()


def json_request(row: np.ndarray) -> bytes:
    """The OIP REST body of one row, its tensor as JSON numbers."""
    tensor = {"name": "INPUT0", "datatype": _datatype(row), "shape": [1, row.size],
              "data": row.astype(np.float32).tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def binary_request(row: np.ndarray, rows: int = 1) -> tuple[bytes, int]:
    """Triton's binary tensor extension: a JSON header, then ``rows`` copies of the raw
    little-endian row; and the header's length (the Inference-Header-Content-Length). Outputs
    come back binary too."""
    datatype = _datatype(row)
    raw = np.ascontiguousarray(row, dtype=NUMPY_DTYPES[datatype]).tobytes() * rows
    tensor = {"name": "INPUT0", "datatype": datatype, "shape": [rows, row.size],
              "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + raw, len(header)


@dataclass
class Case:
    """One benchmarked model version: where it is, its one-row requests and expected answer."""

    name: str
    version: str
    directory: Path
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    grpc_body: bytes = b""
    json_body: bytes = b""
    binary_body: bytes = b""
    binary_header_length: int = 0
    expected: np.ndarray | None = None
    output_dtype: np.dtype = field(default_factory=lambda: np.dtype("<f4"))

    @property
    def artifact(self) -> Path:
        return self.directory / self.version / "model.onnx"

    @property
    def config_path(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def http_path(self) -> str:
        return f"/v2/models/{self.name}/versions/{self.version}/infer"

    def queue_delay_us(self) -> int:
        batching = load_model_config(self.config_path, self.name).dynamic_batching
        return batching.max_queue_delay_microseconds if batching else 0

    def fill_callers(self) -> int:
        """Callers that keep a full batch running on every instance with the next one queued."""
        config = load_model_config(self.config_path, self.name)
        return 2 * config.instance_count * max(1, config.max_batch_size)


def _digits() -> Path:
    """The shipped ``digits`` version 1 with ``max_queue_delay_microseconds: 0``: the added
    latency at concurrency 1 is measured without the batcher's wait (issue 3, target 3)."""
    folder = REPO / "digits"
    if folder.is_symlink():  # the link to models/digits of earlier benches
        folder.unlink()
    return digits_without_delay(folder)


def digits_without_delay(folder: Path, device: str | None = None) -> Path:
    """``folder``: the shipped ``digits`` version 1 with no queue delay, on ``device`` if
    given."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "1").exists():
        (folder / "1").symlink_to(ROOT / "models" / "digits" / "1", target_is_directory=True)
    shipped = (ROOT / "models" / "digits" / "config.yaml").read_text()
    config = re.sub(r"max_queue_delay_microseconds: \d+", "max_queue_delay_microseconds: 0",
                    shipped)
    if device is not None:
        config = re.sub(r"device: \S+", f"device: {device}", config)
    if not (folder / "config.yaml").exists() or (folder / "config.yaml").read_text() != config:
        (folder / "config.yaml").write_text(config)
    return folder


def prepare_repo(models: Sequence[str] = MODELS) -> dict[str, Case]:
    """``loadtest/.models`` with the cases asked for: the built ``heavy`` and ``resnet50``
    models and the shipped ``digits`` version 1 without queue delay."""
    from loadtest import build_resnet
    from loadtest.build_heavy_model import build

    REPO.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(exist_ok=True)
    builders = {"digits": _digits, "heavy": lambda: build(REPO),
                "resnet50": lambda: build_resnet.build(REPO)}
    cases = {name: Case(name, "1", builders[name]()) for name in models}
    for case in cases.values():
        fill_requests(case)
    return cases


def fill_requests(case: Case, seed: int = 7, rows: int = 1) -> None:
    """One random row of the model's input datatype, and requests of it: gRPC and binary ones
    of ``rows`` copies, a JSON one of the row alone."""
    config = load_model_config(case.config_path, case.name)
    assert config.inputs is not None and config.outputs is not None
    width = config.inputs[0].shape[0]
    dtype = NUMPY_DTYPES[config.inputs[0].datatype]
    case.row = np.random.default_rng(seed).random(width, dtype=np.float32).astype(dtype)
    case.output_dtype = NUMPY_DTYPES[config.outputs[0].datatype]
    case.grpc_body = infer_request(case.name, case.version, case.row, rows)
    case.json_body = json_request(case.row)
    case.binary_body, case.binary_header_length = binary_request(case.row, rows)


@dataclass(frozen=True)
class BatchPoint:
    """The in-process backend at one batch size: rows/s and the latency of one call."""

    batch: int
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    #: Sessions run side by side, the thread budget split between them (as instance_count).
    instances: int = 1

    @property
    def layout(self) -> str:
        return f"batch {self.batch}" + (f", {self.instances} instances" if self.instances > 1
                                         else "")


def _calls(backend: Backend, x: np.ndarray, end: int, latencies: list[int]) -> None:
    """Back-to-back calls until ``end`` (perf_counter_ns), each call's latency appended."""
    run, clock = backend.run, time.perf_counter_ns
    while (t0 := clock()) < end:
        run([x])
        latencies.append(clock() - t0)


def time_batch(backends: Sequence[Backend], x: np.ndarray, seconds: float) -> BatchPoint:
    """Back-to-back calls of one batch size for ``seconds`` on each backend at once (one
    thread each, as the runtime runs its instances): rows/s and per-call latency."""
    for backend in backends:
        for _ in range(5):
            backend.run([x])
    latencies: list[list[int]] = [[] for _ in backends]
    start = time.perf_counter_ns()
    end = start + int(seconds * 1e9)
    threads = [threading.Thread(target=_calls, args=(b, x, end, lat))
               for b, lat in zip(backends, latencies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = (time.perf_counter_ns() - start) / 1e9
    ns = np.concatenate([np.asarray(lat) for lat in latencies])
    return BatchPoint(len(x), len(x) * len(ns) / elapsed, float(np.percentile(ns, 50)) / 1e6,
                      float(np.percentile(ns, 99)) / 1e6, len(backends))


def random_batch(case: Case, size: int) -> np.ndarray:
    """`size` random rows of the model's input, the same for every run of the bench."""
    rng = np.random.default_rng(11)
    return rng.random((size, case.row.size), dtype=np.float32).astype(case.row.dtype)


def backends_for(case: Case, instances: int, threads: int) -> list[Backend]:
    """`instances` sessions of the model as the runtime builds them, sharing `threads`."""
    from runtime.backends.onnx import OnnxBackend

    config = load_model_config(case.config_path, case.name)
    return [OnnxBackend(case.artifact, config, max(1, threads // instances))
            for _ in range(instances)]


def ceiling(case: Case, threads: int, seconds: float) -> list[BatchPoint]:
    """The backend in this process, as the runtime builds it, at each batch size, as one
    session with every thread and (with 2+ threads) as one single-thread session per thread
    side by side; also sets ``case.expected``, the answer every served path must give."""
    config = load_model_config(case.config_path, case.name)
    layouts = [backends_for(case, 1, threads)]
    if threads > 1:
        layouts.append(backends_for(case, threads, threads))
    case.expected = layouts[0][0].run([case.row.reshape(1, -1)])[0]
    # NOTE: every size for a batching model, whatever its max_batch_size: the ceiling is what
    # the backend can do, and the served config's cap is a choice measured against it.
    sizes = BATCH_SIZES if config.max_batch_size > 0 else (1,)
    points = []
    for backends in layouts:
        for size in sizes:
            points.append(time_batch(backends, random_batch(case, size), seconds))
            print(f"  {case.name} in-process {points[-1].layout}: "
                  f"{points[-1].rows_per_s:10.0f} rows/s, p50 {points[-1].p50_ms:.3f} ms",
                  flush=True)
    return points


def _compare(where: str, case: Case, got: np.ndarray) -> None:
    if case.expected is None:
        return
    want = case.expected.reshape(-1)
    # Half precision: another session may pick other convolution algorithms (cuDNN autotune).
    rtol, atol = (2e-2, 2e-2) if want.dtype == np.float16 else (1e-4, 1e-5)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
        raise RuntimeError(f"{where}: wrong answer for {case.name}: {got[:8]} ...")


def check_grpc(target: str, case: Case) -> int:
    """One real call: grpc-status must be OK and the answer must match the in-process one.
    Returns the size of the answer's gRPC message on the wire (5-byte prefix included)."""
    with grpc.insecure_channel(target) as channel:
        answer = channel.unary_unary(METHOD)(case.grpc_body, timeout=60)
    response = pb.ModelInferResponse.FromString(answer)
    got = (np.frombuffer(response.raw_output_contents[0], dtype=case.output_dtype)
           if len(response.raw_output_contents) == 1 else np.zeros(0, case.output_dtype))
    _compare(f"gRPC {target}", case, got)
    return len(answer) + 5


Answer = tuple[int, dict[str, str], bytes]


def post(address: str, path: str, body: bytes, headers: dict[str, str]) -> Answer:
    """One HTTP/1.1 POST: status, headers (lower-case names) and body."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def check_http(address: str, case: Case, binary: bool) -> None:
    """One real call over HTTP (JSON or binary tensors): 200 and the in-process answer."""
    if binary:
        headers = {HEADER_LENGTH: str(case.binary_header_length),
                   "Content-Type": "application/octet-stream"}
        status, got_headers, data = post(address, case.http_path, case.binary_body, headers)
    else:
        headers = {"Content-Type": "application/json"}
        status, got_headers, data = post(address, case.http_path, case.json_body, headers)
    where = f"HTTP {'binary' if binary else 'JSON'} {address}"
    if status != 200:
        raise RuntimeError(f"{where}: status {status}: {data[:300]!r}")
    length = got_headers.get(HEADER_LENGTH.lower())
    if binary:
        if length is None:
            raise RuntimeError(f"{where}: the answer has no {HEADER_LENGTH}: {data[:300]!r}")
        got = np.frombuffer(data[int(length):], dtype=case.output_dtype)
    else:
        got = np.asarray(json.loads(data)["outputs"][0]["data"], dtype=case.output_dtype)
    _compare(where, case, got)
