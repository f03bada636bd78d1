"""Loading, replacing and retiring versions while requests flow: the repository extension through
tritonclient, and a rollout under 32 concurrent callers with no failed request."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Background, Servers
from tests.integration.test_cli import READY, start, wait_for
from tests.waiting import until

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"
ROWS = np.ones((1, 64), np.float32)


@pytest.fixture(scope="module")
def swap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    repo = tmp_path_factory.mktemp("swap") / "models"
    shutil.copytree(DIGITS, repo / "digits")
    with Background(repo) as servers:
        yield servers


def infer(url: str, model: str = "digits", version: str = "") -> str:
    tensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(ROWS)
    answer = tgrpc.InferenceServerClient(url).infer(model, [tensor], model_version=version)
    assert answer.as_numpy("OUTPUT0").shape == (1, 10)
    return str(answer.get_response().model_version)


def test_unload_and_load_through_tritonclient(swap: Servers) -> None:
    client = tgrpc.InferenceServerClient(swap.gateway_grpc)
    index = {(m.name, m.version) for m in client.get_model_repository_index().models}
    assert {("digits", "1"), ("digits", "2")} <= index
    client.unload_model("digits")
    assert not client.is_model_ready("digits")
    with pytest.raises(InferenceServerException, match="not served here"):
        infer(swap.gateway_grpc)
    thttp.InferenceServerClient(swap.gateway_http).load_model("digits")
    assert client.is_model_ready("digits", "1") and client.is_model_ready("digits", "2")
    assert infer(swap.gateway_grpc) == "2"


def test_load_with_a_config_and_files_serves_a_new_model(swap: Servers) -> None:
    config = json.dumps({
        "name": "uploaded", "platform": "onnxruntime_onnx", "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [64]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [10]}],
        "version_policy": {"all": {}},
    })
    files = {"file:1/model.onnx": (DIGITS / "1" / "model.onnx").read_bytes()}
    tgrpc.InferenceServerClient(swap.gateway_grpc).load_model("uploaded", config=config,
                                                              files=files)
    assert infer(swap.gateway_grpc, "uploaded") == "1"
    assert not (swap.repository / "uploaded").exists()  # kept apart, as Triton


def test_a_broken_upload_is_refused_and_changes_nothing(swap: Servers) -> None:
    client = thttp.InferenceServerClient(swap.gateway_http)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("digits", files={"file:3/model.onnx": b"not a model"})
    assert caught.value.status() == "400"
    assert "version 3 was not loaded" in (caught.value.message() or "")
    assert infer(swap.gateway_grpc) == "2"
    assert not client.is_model_ready("digits", "3")
    assert not (swap.repository / "digits" / "3").exists()


def test_a_file_outside_the_model_folder_is_refused(swap: Servers) -> None:
    client = tgrpc.InferenceServerClient(swap.gateway_grpc)
    with pytest.raises(InferenceServerException, match="a path inside the model folder"):
        client.load_model("digits", files={"file:../escape/model.onnx": b"x"})
    assert not (swap.repository / "escape").exists()


class Callers:
    """`count` threads calling without a version until stopped; answers and failures kept."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(count)]

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                version = infer(self.url)
            except Exception as exc:  # every failure counts, whatever its kind
                with self.lock:
                    self.failures.append(repr(exc))
            else:
                with self.lock:
                    self.versions[version] += 1

    def seen(self) -> Counter[str]:
        with self.lock:
            return Counter(self.versions)

    def __enter__(self) -> Callers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def cli(repo: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "tensorgate", *args, "--model-repository",
                           str(repo), "--registry", str(repo.parent / "r.db")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def only_version_3_answers(callers: Callers) -> bool:
    """True once 20 answers in a row came from version 3: every gateway has the new policy."""
    before = callers.seen()
    until(lambda: callers.seen()["3"] > before["3"] + 20, "20 more answers from version 3")
    return callers.seen()["1"] == before["1"]


def test_a_rollout_under_32_callers_fails_no_request(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    (repo / "digits" / "1").mkdir(parents=True)
    shutil.copy(DIGITS / "config.yaml", repo / "digits")
    shutil.copy(DIGITS / "1" / "model.onnx", repo / "digits" / "1")
    process, lines = start("serve", "--model-repository", str(repo), "--registry",
                           str(tmp_path / "r.db"), "--http-port", "0", "--grpc-port", "0",
                           "--metrics-port", "-1", "--no-auth", "--threads", "2",
                           "--gateway-processes", "1")
    seen_lines: list[str] = []
    try:
        ready = wait_for(lines, READY, seen_lines)
        assert ready, "".join(seen_lines)
        url = f"127.0.0.1:{ready.group(2)}"
        http = thttp.InferenceServerClient(f"127.0.0.1:{ready.group(1)}")
        cli(repo, "traffic", "set", "digits", "1=100")
        with Callers(url, 32) as callers:
            until(lambda: callers.seen()["1"] > 50, "50 answers from version 1")
            cli(repo, "models", "register", "digits", "--file", str(DIGITS / "1" / "model.onnx"),
                "--version", "3")
            until(lambda: http.is_model_ready("digits", "3"), "version 3 loaded", every_s=0.1)
            cli(repo, "traffic", "set", "digits", "1=50", "3=50")
            until(lambda: callers.seen()["3"] > 50, "50 answers from version 3")
            cli(repo, "traffic", "set", "digits", "3=100")
            until(lambda: only_version_3_answers(callers), "every gateway routing to 3 only")
            cli(repo, "models", "unregister", "digits:1")
            until(lambda: not http.is_model_ready("digits", "1"), "version 1 retired", every_s=0.1)
            served = callers.seen()
            until(lambda: callers.seen()["3"] > served["3"] + 20, "20 more answers from version 3")
        assert callers.failures == []
        assert set(served) == {"1", "3"}
        assert callers.seen()["1"] == served["1"]  # none after version 1 was retired
        assert callers.seen()["3"] > served["3"]
    finally:
        process.terminate()
        process.wait(30)
