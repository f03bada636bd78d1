"""Triton's CUDA shared memory through a real gateway and worker: what every machine can check
(each malformed register refused by name, status shapes, unregister of an unknown region, the
answer without a GPU), and, where a GPU is visible, inferences whose inputs and outputs lie in
CUDA regions made by tritonclient's own helpers, over gRPC and HTTP."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from runtime.shm import Regions
from runtime.shm_api import NO_GPU, gpu_visible
from tests.integration import cuda_client
from tests.integration.shm_client import shm
from tests.integration.test_cli import READY, start, wait_for
from tests.integration.test_shared_memory import (
    IN_BYTES,
    OUT_BYTES,
    ROW,
    Setup,
    keyed_setup,
    refused,
)

HANDLE = base64.b64encode(b"\x11" * 64)  # well formed, opens nothing
CUDA = "cuda_shared_memory"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield from keyed_setup(tmp_path_factory.mktemp("cudashm"))


def test_server_metadata_lists_cuda_shared_memory_only_where_a_worker_offers_it(
        setup: Setup) -> None:
    offered = Regions().cuda.available()
    http = thttp.InferenceServerClient(setup.servers.gateway_http)
    assert (CUDA in http.get_server_metadata(headers=setup.auth())["extensions"]) == offered
    rpc = tgrpc.InferenceServerClient(setup.servers.gateway_grpc)
    assert (CUDA in rpc.get_server_metadata(headers=setup.auth()).extensions) == offered


def post(setup: Setup, path: str, body: dict[str, Any], who: str = "alice"
         ) -> requests.Response:
    return requests.post(f"http://{setup.servers.gateway_http}/v2/cudasharedmemory{path}",
                         json=body, headers=setup.auth(who), timeout=30)


@pytest.mark.parametrize(("body", "expected"), [
    ({"raw_handle": {"b64": "not base64!"}, "byte_size": 64}, "raw_handle.b64: not valid base64"),
    ({"raw_handle": {"b64": base64.b64encode(b"x" * 10).decode()}, "byte_size": 64},
     "raw_handle must be the 64 bytes of a cudaIpcMemHandle_t; got 10 bytes"),
    ({"raw_handle": {"b64": HANDLE.decode()}, "byte_size": 0}, "byte_size"),
    ({"raw_handle": {"b64": HANDLE.decode()}, "byte_size": 64, "device_id": -1}, "device_id"),
    ({"byte_size": 64}, "raw_handle"),
])
def test_http_register_refuses_a_malformed_request_by_name(
        setup: Setup, body: dict[str, Any], expected: str) -> None:
    answer = post(setup, "/region/g/register", body)
    assert answer.status_code == 400, answer.text
    assert expected in answer.json()["error"]


def test_grpc_register_refuses_a_malformed_request_by_name(setup: Setup) -> None:
    client = tgrpc.InferenceServerClient(setup.servers.gateway_grpc)
    for handle, device, size, expected in [
            (base64.b64encode(b"x" * 63), 0, 64, "got 63 bytes"),
            (HANDLE, 0, 0, "byte_size must be more than 0; got 0"),
            (HANDLE, -1, 64, "device_id must be 0 or more; got -1")]:
        bad = refused(lambda: client.register_cuda_shared_memory(
            "g", handle, device, size, headers=setup.auth()))  # noqa: B023
        assert bad.status() == "StatusCode.INVALID_ARGUMENT", bad.message()
        assert expected in str(bad.message()) and "region 'g'" in str(bad.message())
    assert client.get_cuda_shared_memory_status(headers=setup.auth(), as_json=True) == {}


def test_an_unknown_device_or_no_gpu_is_said_plainly(setup: Setup) -> None:
    client = tgrpc.InferenceServerClient(setup.servers.gateway_grpc)
    refusal = refused(lambda: client.register_cuda_shared_memory(
        "g", HANDLE, 99, 64, headers=setup.auth()))
    if gpu_visible():
        assert refusal.status() == "StatusCode.INVALID_ARGUMENT"
        assert "device_id 99 is not a GPU this runtime sees" in str(refusal.message())
    else:
        assert refusal.status() == "StatusCode.FAILED_PRECONDITION"
        assert NO_GPU in str(refusal.message())
        answer = post(setup, "/region/g/register",
                      {"raw_handle": {"b64": HANDLE.decode()}, "byte_size": 64})
        assert answer.status_code == 400 and "this runtime sees no CUDA GPU" in answer.text


def test_a_name_a_system_region_holds_is_taken(setup: Setup) -> None:
    key = f"/h29-{os.getpid()}-taken"
    made = shm.create_shared_memory_region("taken", key, IN_BYTES)
    http = thttp.InferenceServerClient(setup.servers.gateway_http)
    try:
        http.register_system_shared_memory("taken", key, IN_BYTES, headers=setup.auth())
        taken = refused(lambda: http.register_cuda_shared_memory(
            "taken", HANDLE, 0, 64, headers=setup.auth()))
        assert taken.status() == "409"
        assert "'taken' is already registered" in str(taken.message())
        # Another caller's names are its own: bob's 'taken' is not alice's.
        bobs = refused(lambda: http.register_cuda_shared_memory(
            "taken", HANDLE, 0, 64, headers=setup.auth("bob")))
        assert bobs.status() != "409"
    finally:
        http.unregister_system_shared_memory(headers=setup.auth())
        shm.destroy_shared_memory_region(made)


def test_status_and_unregister_of_unknown_regions(setup: Setup) -> None:
    http = thttp.InferenceServerClient(setup.servers.gateway_http)
    assert http.get_cuda_shared_memory_status(headers=setup.auth()) == []
    missing = refused(lambda: http.get_cuda_shared_memory_status("nope", headers=setup.auth()))
    assert missing.status() == "404"
    assert "no CUDA shared memory region 'nope'" in str(missing.message())
    gone = refused(lambda: http.unregister_cuda_shared_memory("nope", headers=setup.auth()))
    assert gone.status() == "404"
    http.unregister_cuda_shared_memory(headers=setup.auth())  # all of none: fine
    rpc = tgrpc.InferenceServerClient(setup.servers.gateway_grpc)
    assert rpc.get_cuda_shared_memory_status(headers=setup.auth(), as_json=True) == {}
    unknown = refused(lambda: rpc.unregister_cuda_shared_memory("nope", headers=setup.auth()))
    assert unknown.status() == "StatusCode.NOT_FOUND"
    anonymous = refused(lambda: http.get_cuda_shared_memory_status())
    assert anonymous.status() == "401"


# --- On a GPU: tritonclient's CUDA helpers, against `tensorgate serve` (the worker must be a
# process of its own: CUDA refuses to open a handle in the process that exported it).


def cudashm() -> Any:
    """tritonclient's CUDA helpers (or their stand-in over libcudart), or a skip saying why."""
    if not gpu_visible():
        pytest.skip("needs a CUDA GPU: none is visible")
    found, why = cuda_client.helpers()
    if found is None:
        pytest.skip(f"needs a client for CUDA regions: {why}")
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`tensorgate serve` without auth, its (HTTP, gRPC) addresses; only where a GPU is."""
    cudashm()
    registry = tmp_path_factory.mktemp("cudaserve") / "registry.db"
    process, lines = start("serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port",
                           "0", "--metrics-port", "-1", "--threads", "1", "--runtime-workers",
                           "1", "--gateway-processes", "1", "--no-auth", "--registry",
                           str(registry))
    seen: list[str] = []
    try:
        ready = wait_for(lines, READY, seen)
        assert ready, "".join(seen)
        yield f"127.0.0.1:{ready.group(1)}", f"127.0.0.1:{ready.group(2)}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, "".join(seen)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


@pytest.fixture
def regions() -> Iterator[Callable[[str, int], Any]]:
    """Makes CUDA regions on GPU 0 with tritonclient's helpers; destroys them afterwards."""
    made: list[Any] = []

    def make(name: str, size: int) -> Any:
        made.append(cudashm().create_shared_memory_region(name, size, 0))
        return made[-1]

    yield make
    for region in made:
        cudashm().destroy_shared_memory_region(region)


def plain_answer(http: str) -> np.ndarray:
    tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(ROW, binary_data=True)
    answer = thttp.InferenceServerClient(http).infer("digits", [tensor]).as_numpy("OUTPUT0")
    assert answer is not None
    return answer


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_infer_with_inputs_and_outputs_in_cuda_regions(
        served: tuple[str, str], regions: Callable[[str, int], Any], protocol: str) -> None:
    helpers, (http, grpc_address) = cudashm(), served
    expected = plain_answer(http)
    inputs, outputs = regions(f"{protocol}-in", IN_BYTES), regions(f"{protocol}-out", 2 * OUT_BYTES)
    helpers.set_shared_memory_region(inputs, [ROW])
    lib: Any = tgrpc if protocol == "grpc" else thttp
    client = lib.InferenceServerClient(grpc_address if protocol == "grpc" else http)
    client.register_cuda_shared_memory("cin", helpers.get_raw_handle(inputs), 0, IN_BYTES)
    client.register_cuda_shared_memory("cout", helpers.get_raw_handle(outputs), 0, 2 * OUT_BYTES)
    try:
        tensor = lib.InferInput("INPUT0", [1, 64], "FP32")
        tensor.set_shared_memory("cin", IN_BYTES)
        wanted = lib.InferRequestedOutput("OUTPUT0")
        wanted.set_shared_memory("cout", OUT_BYTES, offset=OUT_BYTES)
        found = client.infer("digits", [tensor], outputs=[wanted]).get_output("OUTPUT0")
        assert list(found["shape"] if protocol == "http" else found.shape) == [1, 10]
        written = helpers.get_contents_as_numpy(outputs, np.float32, [2, 10])[1:]
        np.testing.assert_allclose(written, expected, rtol=1e-6)
        # The input from a CUDA region, the output in the answer.
        plain = client.infer("digits", [tensor]).as_numpy("OUTPUT0")
        np.testing.assert_allclose(plain, expected, rtol=1e-6)
        status = client.get_cuda_shared_memory_status()
        listed = status if protocol == "http" else [
            {"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size}
            for r in status.regions.values()]
        assert sorted((r["name"], r["device_id"], r["byte_size"]) for r in listed) == [
            ("cin", 0, IN_BYTES), ("cout", 0, 2 * OUT_BYTES)]
        tensor.set_shared_memory("cin", IN_BYTES, offset=4)
        outside = refused(lambda: client.infer("digits", [tensor]))
        assert "is outside CUDA shared memory region 'cin'" in str(outside.message())
    finally:
        client.unregister_cuda_shared_memory()
    left = client.get_cuda_shared_memory_status()
    assert (left if protocol == "http" else list(left.regions)) == []


def test_a_handle_opened_once_serves_many_requests_and_unregister_closes_it(
        served: tuple[str, str], regions: Callable[[str, int], Any]) -> None:
    helpers, (http, _) = cudashm(), served
    inputs, outputs = regions("many-in", IN_BYTES), regions("many-out", OUT_BYTES)
    client = thttp.InferenceServerClient(http)
    client.register_cuda_shared_memory("min", helpers.get_raw_handle(inputs), 0, IN_BYTES)
    client.register_cuda_shared_memory("mout", helpers.get_raw_handle(outputs), 0, OUT_BYTES)
    tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_shared_memory("min", IN_BYTES)
    wanted = thttp.InferRequestedOutput("OUTPUT0")
    wanted.set_shared_memory("mout", OUT_BYTES)
    for scale in (1.0, 0.5, 0.25):  # NOTE: the region's new bytes are what the model reads
        helpers.set_shared_memory_region(inputs, [ROW * scale])
        client.infer("digits", [tensor], outputs=[wanted])
        want = thttp.InferInput("INPUT0", [1, 64], "FP32")
        want.set_data_from_numpy(ROW * scale)
        np.testing.assert_allclose(helpers.get_contents_as_numpy(outputs, np.float32, [1, 10]),
                                   client.infer("digits", [want]).as_numpy("OUTPUT0"),
                                   rtol=1e-6)
    client.unregister_cuda_shared_memory()
    gone = refused(lambda: client.infer("digits", [tensor]))
    assert gone.status() == "404"


def test_no_cuda_regions_left_behind_by_a_perf_analyzer_run(served: tuple[str, str]) -> None:
    tool = os.environ.get("PERF_ANALYZER")
    if not tool or not Path(tool).exists():
        pytest.skip("perf_analyzer not named in PERF_ANALYZER")
    run = subprocess.run(
        [tool, "-m", "digits", "-u", served[1], "-i", "grpc", "--shared-memory", "cuda",
         "--measurement-mode", "count_windows", "--measurement-request-count", "50",
         "--stability-percentage", "999", "--max-trials", "2", "--concurrency-range", "2"],
        capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert thttp.InferenceServerClient(served[0]).get_cuda_shared_memory_status() == []


@pytest.mark.parametrize("version", ["1", "2"])  # ONNX Runtime, PyTorch
def test_requests_in_and_out_of_a_cuda_region_share_batches(
        served: tuple[str, str], regions: Callable[[str, int], Any], version: str) -> None:
    """Requests whose rows lie in one CUDA region, sent at once beside requests with their
    bytes (the shipped model waits 500 µs to fill a batch): gathered together on the GPU, each
    answered with its own rows."""
    helpers, (http, _) = cudashm(), served
    count = 16
    rows = np.random.default_rng(3).random((count, 64), dtype=np.float32)
    inputs = regions(f"batch-in-{version}", count * IN_BYTES)
    helpers.set_shared_memory_region(inputs, [rows])
    client = thttp.InferenceServerClient(http, concurrency=count)
    client.register_cuda_shared_memory(f"bin{version}", helpers.get_raw_handle(inputs), 0,
                                       count * IN_BYTES)

    def send(i: int) -> Any:
        tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
        if i % 2:
            tensor.set_shared_memory(f"bin{version}", IN_BYTES, offset=i * IN_BYTES)
        else:
            tensor.set_data_from_numpy(rows[i : i + 1], binary_data=True)
        return client.async_infer("digits", [tensor], model_version=version)

    try:
        sent = [send(i) for i in range(count)]
        got = np.concatenate([s.get_result().as_numpy("OUTPUT0") for s in sent])
    finally:
        client.unregister_cuda_shared_memory()
    whole = thttp.InferInput("INPUT0", [count, 64], "FP32")
    whole.set_data_from_numpy(rows, binary_data=True)
    expected = client.infer("digits", [whole], model_version=version).as_numpy("OUTPUT0")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
