"""Hostile repository loads (issue 21, rows 1 and 2): names and file paths that point outside the
repository are refused before any write, a failed load leaves the tree byte for byte as it was,
and a broken model on disk is skipped at start-up instead of stopping the worker."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from common.uploads import MAX_UPLOAD_FILES
from tests.integration.conftest import Background, Servers
from tests.integration.test_cli import READY, start, wait_for

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"
CONFIG = json.dumps({
    "name": "newm2", "platform": "onnxruntime_onnx", "max_batch_size": 8,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [64]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [10]}],
})
GARBAGE = b"\x00garbag"


def tree(root: Path) -> dict[str, object]:
    """Every entry under `root` (links not followed): folders, links' targets, files' bytes."""
    found: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    repo = tmp_path_factory.mktemp("hostile") / "models"
    shutil.copytree(DIGITS, repo / "digits")
    with Background(repo) as servers:
        yield servers


def post(servers: Servers, path: str, body: dict) -> int:
    host, port = servers.gateway_http.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", path, json.dumps(body).encode(),
                           {"content-type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


def test_probe_01_a_path_as_the_model_name_writes_nothing(hostile: Servers) -> None:
    outside = hostile.repository.parent
    before = tree(outside)
    # Through the gateway, and straight to the worker: each checks before touching the disk.
    for url in (hostile.gateway_grpc, hostile.runtime_grpc):
        client = tgrpc.InferenceServerClient(url)
        for name in (str(outside / "adv"), "../adv", ".."):
            with pytest.raises(InferenceServerException, match="model name must be") as caught:
                client.load_model(name, files={"file:adv/victim.txt": b"owned"})
            assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    status = post(hostile, "/v2/repository/models/../load",
                  {"parameters": {"file:pwn/owned.txt": base64.b64encode(b"x").decode()}})
    assert status == 400
    assert tree(outside) == before


def test_probe_01_file_paths_outside_a_version_folder_are_refused(hostile: Servers) -> None:
    before = tree(hostile.repository.parent)
    client = tgrpc.InferenceServerClient(hostile.runtime_grpc)
    for key in ("file:1/../../../pwn.pth", "file:/etc/x", "file:pwn/owned.txt",
                "file:1/.hidden", "file:1//model.onnx", "file:model.onnx"):
        with pytest.raises(InferenceServerException, match="a path inside the model folder"):
            client.load_model("digits", files={key: b"x"})
        encoded = base64.b64encode(b"x").decode()
        assert post(hostile, "/v2/repository/models/digits/load",
                    {"parameters": {key: encoded}}) == 400
    many = {f"file:3/f{i}.bin": b"x" for i in range(MAX_UPLOAD_FILES + 1)}
    with pytest.raises(InferenceServerException, match=f"at most {MAX_UPLOAD_FILES} files"):
        client.load_model("digits", files=many)
    assert tree(hostile.repository.parent) == before


def test_probe_01_a_symlinked_model_folder_is_not_written_through(hostile: Servers,
                                                                 tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (hostile.repository / "linked").symlink_to(target, target_is_directory=True)
    try:
        with pytest.raises(InferenceServerException, match="symbolic link"):
            tgrpc.InferenceServerClient(hostile.gateway_grpc).load_model(
                "linked", config=CONFIG, files={"file:1/model.onnx": b"x"})
        assert list(target.iterdir()) == []
    finally:
        (hostile.repository / "linked").unlink()


def test_probe_02_a_failed_load_leaves_the_repository_byte_identical(hostile: Servers) -> None:
    before = tree(hostile.repository.parent)
    encoded = base64.b64encode(GARBAGE).decode()
    status = post(hostile, "/v2/repository/models/newm2/load",
                  {"parameters": {"config": CONFIG, "file:1/model.onnx": encoded}})
    assert status == 400
    client = thttp.InferenceServerClient(hostile.gateway_http)
    with pytest.raises(InferenceServerException, match="version 3 was not loaded"):
        client.load_model("digits", files={"file:3/model.onnx": GARBAGE})
    assert tree(hostile.repository.parent) == before
    assert client.is_model_ready("digits", "2") and not client.is_model_ready("newm2")


def test_probe_02_serve_skips_a_broken_model_and_serves_the_others(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(DIGITS, repo / "digits")
    (repo / "newm2" / "1").mkdir(parents=True)
    (repo / "newm2" / "config.yaml").write_text(
        "max_batch_size: 8\ninputs: [{name: INPUT0, datatype: FP32, shape: [64]}]\n"
        "outputs: [{name: OUTPUT0, datatype: FP32, shape: [10]}]\n")
    (repo / "newm2" / "1" / "model.onnx").write_bytes(GARBAGE)
    process, lines = start("serve", "--model-repository", str(repo), "--host", "127.0.0.1",
                           "--http-port", "0", "--grpc-port", "0", "--metrics-port", "-1",
                           "--threads", "1", "--registry", str(tmp_path / "registry.db"))
    seen: list[str] = []
    try:
        match = wait_for(lines, READY, seen)
        assert match, "".join(seen)
        client = thttp.InferenceServerClient(f"127.0.0.1:{match.group(1)}")
        assert client.is_model_ready("digits", "1")
        assert not client.is_model_ready("newm2")
        assert any("model 'newm2' skipped" in line for line in seen), "".join(seen)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
