"""Triton's system shared memory through a real gateway and worker, with tritonclient's own
shared-memory helpers over HTTP and gRPC: register, infer in regions, status, unregister, and
what another key, a bad key or a span past the end gets."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from common.registry import Registry
from common.settings import AuthSettings
from tests.integration.conftest import ROOT, Background, Servers
from tests.integration.shm_client import shm
from tests.integration.test_cli import READY, start, wait_for

IN_BYTES, OUT_BYTES = 64 * 4, 10 * 4
ROW = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(1, 64)


@dataclass
class Setup:
    servers: Servers
    keys: dict[str, str]

    def auth(self, who: str = "alice") -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[who]}"}


@pytest.fixture(scope="module")
def open_servers() -> Iterator[Servers]:
    """Without auth: perf_analyzer sends no credential."""
    with Background(ROOT / "models") as servers:
        yield servers


def keyed_setup(tmp: Path) -> Iterator[Setup]:
    """A gateway and worker with auth on, and the keys of two callers, alice and bob."""
    registry = Registry(tmp / "registry.db")
    keys = {name: registry.create_key(name, "infer", ["digits"])[1] for name in ("alice", "bob")}
    with Background(ROOT / "models", auth=AuthSettings(), registry_path=tmp / "registry.db",
                    registry_refresh_s=0.05) as servers:
        yield Setup(servers, keys)
    registry.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield from keyed_setup(tmp_path_factory.mktemp("shm"))


@pytest.fixture
def region() -> Iterator[Callable[[str, int], Any]]:
    """Makes POSIX shm objects named after the test process; destroys them afterwards."""
    made: list[Any] = []

    def make(name: str, size: int) -> Any:
        handle = shm.create_shared_memory_region(name, f"/h19-{os.getpid()}-{name}", size)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def key_of(name: str) -> str:
    return f"/h19-{os.getpid()}-{name}"


def auth(setup: Setup, who: str) -> dict[str, str]:
    return setup.auth(who)


def known_answer(setup: Setup) -> np.ndarray:
    tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(ROW, binary_data=True)
    client = thttp.InferenceServerClient(setup.servers.gateway_http)
    answer = client.infer("digits", [tensor], headers=auth(setup, "alice")).as_numpy("OUTPUT0")
    assert answer is not None
    return answer


def refused(call: Callable[[], Any]) -> InferenceServerException:
    try:
        call()
    except InferenceServerException as exc:
        # NOTE: without its frames: a cycle through them would leave the client to the
        # collector, which may run on the servers' thread, where gevent refuses to close it.
        exc.__traceback__ = None
        return exc
    raise AssertionError("the call was not refused")


def test_server_metadata_lists_system_shared_memory(setup: Setup) -> None:
    http = thttp.InferenceServerClient(setup.servers.gateway_http)
    extensions = http.get_server_metadata(headers=auth(setup, "alice"))["extensions"]
    assert "system_shared_memory" in extensions
    rpc = tgrpc.InferenceServerClient(setup.servers.gateway_grpc)
    metadata = rpc.get_server_metadata(headers=auth(setup, "alice"))
    assert "system_shared_memory" in metadata.extensions


def test_http_register_infer_status_unregister(setup: Setup, region: Any) -> None:
    expected = known_answer(setup)
    inputs, outputs = region("hin", IN_BYTES), region("hout", 2 * OUT_BYTES)
    shm.set_shared_memory_region(inputs, [ROW])
    client = thttp.InferenceServerClient(setup.servers.gateway_http)
    headers = auth(setup, "alice")
    client.register_system_shared_memory("hin", key_of("hin"), IN_BYTES, headers=headers)
    client.register_system_shared_memory("hout", key_of("hout"), 2 * OUT_BYTES,
                                         headers=headers)
    tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_shared_memory("hin", IN_BYTES)
    # The input from a region, the output as binary data in the answer.
    plain = client.infer("digits", [tensor], headers=headers,
                         outputs=[thttp.InferRequestedOutput("OUTPUT0", binary_data=True)])
    np.testing.assert_allclose(plain.as_numpy("OUTPUT0"), expected, rtol=1e-6)
    # Both in regions: the answer carries the shape, the bytes are in the output region.
    wanted = thttp.InferRequestedOutput("OUTPUT0", binary_data=True)
    wanted.set_shared_memory("hout", OUT_BYTES, offset=OUT_BYTES)
    result = client.infer("digits", [tensor], outputs=[wanted], headers=headers)
    assert result.get_output("OUTPUT0")["shape"] == [1, 10]
    written = shm.get_contents_as_numpy(outputs, np.float32, [1, 10], offset=OUT_BYTES)
    np.testing.assert_allclose(written, expected, rtol=1e-6)
    status = client.get_system_shared_memory_status(headers=headers)
    assert sorted((r["name"], r["key"], r["byte_size"]) for r in status) == [
        ("hin", key_of("hin"), IN_BYTES), ("hout", key_of("hout"), 2 * OUT_BYTES)]
    client.unregister_system_shared_memory("hin", headers=headers)
    assert [r["name"] for r in client.get_system_shared_memory_status(headers=headers)] == [
        "hout"]
    client.unregister_system_shared_memory(headers=headers)
    assert client.get_system_shared_memory_status(headers=headers) == []
    gone = refused(lambda: client.infer("digits", [tensor], headers=headers))
    assert gone.status() == "404" and "no shared memory region 'hin'" in str(gone.message())


def test_grpc_register_infer_status_unregister(setup: Setup, region: Any) -> None:
    expected = known_answer(setup)
    inputs, outputs = region("gin", IN_BYTES), region("gout", OUT_BYTES)
    shm.set_shared_memory_region(inputs, [ROW])
    client = tgrpc.InferenceServerClient(setup.servers.gateway_grpc)
    headers = auth(setup, "alice")
    client.register_system_shared_memory("gin", key_of("gin"), IN_BYTES, headers=headers)
    client.register_system_shared_memory("gout", key_of("gout"), OUT_BYTES, headers=headers)
    tensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_shared_memory("gin", IN_BYTES)
    wanted = tgrpc.InferRequestedOutput("OUTPUT0")
    wanted.set_shared_memory("gout", OUT_BYTES)
    result = client.infer("digits", [tensor], outputs=[wanted], headers=headers)
    assert list(result.get_output("OUTPUT0").shape) == [1, 10]
    assert list(result.get_response().raw_output_contents) == [b""]  # the bytes are in gout
    written = shm.get_contents_as_numpy(outputs, np.float32, [1, 10])
    np.testing.assert_allclose(written, expected, rtol=1e-6)
    plain = client.infer("digits", [tensor], headers=headers)
    np.testing.assert_allclose(plain.as_numpy("OUTPUT0"), expected, rtol=1e-6)
    status = client.get_system_shared_memory_status(headers=headers, as_json=True)
    assert sorted(status["regions"]) == ["gin", "gout"]
    assert status["regions"]["gin"]["key"] == key_of("gin")
    client.unregister_system_shared_memory(headers=headers)
    assert client.get_system_shared_memory_status(headers=headers, as_json=True) == {}


def test_a_region_another_key_owns_can_be_neither_used_nor_unregistered(
        setup: Setup, region: Any) -> None:
    shm.set_shared_memory_region(region("mine", IN_BYTES), [ROW])
    alice = thttp.InferenceServerClient(setup.servers.gateway_http)
    alice.register_system_shared_memory("mine", key_of("mine"), IN_BYTES,
                                        headers=auth(setup, "alice"))
    bob = tgrpc.InferenceServerClient(setup.servers.gateway_grpc)
    tensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_shared_memory("mine", IN_BYTES)
    used = refused(lambda: bob.infer("digits", [tensor], headers=auth(setup, "bob")))
    assert used.status() == "StatusCode.NOT_FOUND"
    assert "no shared memory region 'mine'" in str(used.message())
    gone = refused(lambda: bob.unregister_system_shared_memory("mine", headers=auth(setup, "bob")))
    assert gone.status() == "StatusCode.NOT_FOUND"
    assert bob.get_system_shared_memory_status(headers=auth(setup, "bob"), as_json=True) == {}
    taken = refused(lambda: bob.register_system_shared_memory(
        "theirs", key_of("mine"), IN_BYTES, headers=auth(setup, "bob")))
    assert taken.status() == "StatusCode.PERMISSION_DENIED"
    # Still alice's, and still working for her.
    answer = tgrpc.InferenceServerClient(setup.servers.gateway_grpc).infer(
        "digits", [tensor], headers=auth(setup, "alice")).as_numpy("OUTPUT0")
    np.testing.assert_allclose(answer, known_answer(setup), rtol=1e-6)
    alice.unregister_system_shared_memory("mine", headers=auth(setup, "alice"))


def test_spans_past_the_end_are_refused_with_the_bounds(setup: Setup, region: Any) -> None:
    region("small", IN_BYTES)
    client = thttp.InferenceServerClient(setup.servers.gateway_http)
    headers = auth(setup, "alice")
    past = refused(lambda: client.register_system_shared_memory(
        "small", key_of("small"), IN_BYTES, offset=8, headers=headers))
    assert past.status() == "400"
    assert f"offset 8 + byte_size {IN_BYTES} runs past the end" in str(past.message())
    client.register_system_shared_memory("small", key_of("small"), IN_BYTES, headers=headers)
    tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_shared_memory("small", IN_BYTES, offset=4)
    outside = refused(lambda: client.infer("digits", [tensor], headers=headers))
    assert outside.status() == "400"
    assert (f"input 'INPUT0': offset 4 + byte_size {IN_BYTES} is outside shared memory region "
            f"'small' ({IN_BYTES} bytes)") in str(outside.message())
    client.unregister_system_shared_memory("small", headers=headers)


@pytest.mark.parametrize(("key", "expected"), [
    ("/../etc/passwd", "must be a POSIX shm name"),
    ("no-slash", "must be a POSIX shm name"),
    ("/tensorgate-arena-1", "are the server's own"),
    (f"/h19-{os.getpid()}-never-made", "no shared memory object"),
])
def test_a_bad_or_missing_key_is_refused(setup: Setup, key: str, expected: str) -> None:
    client = thttp.InferenceServerClient(setup.servers.gateway_http)
    bad = refused(lambda: client.register_system_shared_memory(
        "bad", key, 64, headers=auth(setup, "alice")))
    assert expected in str(bad.message())
    assert client.get_system_shared_memory_status(headers=auth(setup, "alice")) == []


def test_a_bad_region_name_is_refused(setup: Setup) -> None:
    client = tgrpc.InferenceServerClient(setup.servers.gateway_grpc)
    bad = refused(lambda: client.register_system_shared_memory(
        "a/b", "/h19-x", 64, headers=auth(setup, "alice")))
    assert bad.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shared memory region name must be" in str(bad.message())


def test_registering_needs_a_credential(setup: Setup) -> None:
    client = thttp.InferenceServerClient(setup.servers.gateway_http)
    anonymous = refused(lambda: client.get_system_shared_memory_status())
    assert anonymous.status() == "401"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_with_system_shared_memory(open_servers: Servers, protocol: str) -> None:
    tool = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")
    if not tool:
        pytest.skip("perf_analyzer not found: put it on PATH or name it in PERF_ANALYZER")
    url = open_servers.gateway_grpc if protocol == "grpc" else open_servers.gateway_http
    run = subprocess.run(
        [tool, "-m", "digits", "-u", url, "-i", protocol, "--shared-memory", "system",
         "--measurement-mode", "count_windows", "--measurement-request-count", "100",
         "--stability-percentage", "999", "--max-trials", "3", "--concurrency-range", "2"],
        capture_output=True, text=True, timeout=300, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    found = re.search(r"Concurrency: 2, throughput: ([0-9.]+) infer/sec", output)
    assert found is not None and float(found.group(1)) > 0, output
    # perf_analyzer unregisters its regions when done: none is left behind.
    client = thttp.InferenceServerClient(open_servers.gateway_http)
    assert client.get_system_shared_memory_status() == []


def test_under_serve_every_gateway_process_and_worker_shares_the_registrations(
        tmp_path: Path, region: Any) -> None:
    """Two gateway processes, two runtime workers: a region registered through one connection
    serves inferences and status through fresh connections (any process, either worker), and
    its unregister reaches them all."""
    process, lines = start("serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port",
                           "0", "--metrics-port", "-1", "--threads", "2", "--runtime-workers",
                           "2", "--gateway-processes", "2", "--no-auth", "--registry",
                           str(tmp_path / "registry.db"))
    seen: list[str] = []
    try:
        ready = wait_for(lines, READY, seen)
        assert ready, "".join(seen)
        http = f"127.0.0.1:{ready.group(1)}"
        shm.set_shared_memory_region(region("sin", IN_BYTES), [ROW])
        outputs = region("sout", OUT_BYTES)
        thttp.InferenceServerClient(http).register_system_shared_memory(
            "sin", key_of("sin"), IN_BYTES)
        thttp.InferenceServerClient(http).register_system_shared_memory(
            "sout", key_of("sout"), OUT_BYTES)
        tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
        tensor.set_data_from_numpy(ROW)
        expected = thttp.InferenceServerClient(http).infer("digits", [tensor]).as_numpy(
            "OUTPUT0")
        tensor.set_shared_memory("sin", IN_BYTES)
        wanted = thttp.InferRequestedOutput("OUTPUT0")
        wanted.set_shared_memory("sout", OUT_BYTES)
        for _ in range(12):  # NOTE: a new connection each time: either process, either worker
            client = thttp.InferenceServerClient(http)
            assert [r["name"] for r in client.get_system_shared_memory_status()] == [
                "sin", "sout"]
            shm.set_shared_memory_region(outputs, [np.zeros((1, 10), np.float32)])
            client.infer("digits", [tensor], outputs=[wanted])
            np.testing.assert_allclose(
                shm.get_contents_as_numpy(outputs, np.float32, [1, 10]), expected, rtol=1e-6)
        thttp.InferenceServerClient(http).unregister_system_shared_memory()
        for _ in range(4):
            client = thttp.InferenceServerClient(http)
            assert client.get_system_shared_memory_status() == []
            gone = refused(lambda: client.infer("digits", [tensor]))  # noqa: B023
            assert gone.status() == "404"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
