"""The repository index with every model's state, and loads with files kept apart from the
repository (Triton's override files), through tritonclient HTTP and gRPC."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Background, Servers

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"
ONNX = (DIGITS / "1" / "model.onnx").read_bytes()
SHORT_LABELS = """\
platform: "onnxruntime_onnx"
max_batch_size: 8
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 10 ], label_filename: "l.txt" } ]
"""
FRESH_CONFIG = json.dumps({
    "name": "fresh", "platform": "onnxruntime_onnx", "max_batch_size": 8,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [64]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [10]}],
})


def _copy(repo: Path, name: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    shutil.copyfile(DIGITS / "config.yaml", repo / name / "config.yaml")
    (repo / name / "1" / "model.onnx").write_bytes(ONNX)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the runtime (in this process) stages loads: tempfile's folder, made ours."""
    tmp_path_factory.getbasetemp()  # pytest's own folder stays where it was
    saved = tempfile.tempdir
    folder = Path(tempfile.mkdtemp(prefix="stage-"))
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, stage: Path) -> Iterator[Servers]:
    repo = tmp_path_factory.mktemp("index") / "models"
    for name in ("digits", "spare", "again"):
        _copy(repo, name)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('platform: "tensorflow_savedmodel"\n')
    (repo / "short" / "1").mkdir(parents=True)
    (repo / "short" / "1" / "model.onnx").write_bytes(ONNX)
    (repo / "short" / "config.pbtxt").write_text(SHORT_LABELS)
    (repo / "short" / "l.txt").write_text("zero\none\ntwo\n")
    with Background(repo) as running:
        yield running


def _index(servers: Servers, protocol: str) -> dict[str, list[tuple[str, str, str]]]:
    if protocol == "http":
        rows = thttp.InferenceServerClient(servers.gateway_http).get_model_repository_index()
    else:
        rows = tgrpc.InferenceServerClient(servers.gateway_grpc).get_model_repository_index(
            as_json=True)["models"]
    found: dict[str, list[tuple[str, str, str]]] = {}
    for row in rows:
        found.setdefault(row["name"], []).append(
            (row.get("version", ""), row.get("state", ""), row.get("reason", "")))
    return found


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


def _staged(stage: Path) -> list[Path]:
    return list(stage.glob("tensorgate-load-*"))


def _version(servers: Servers, model: str) -> str:
    client = tgrpc.InferenceServerClient(servers.gateway_grpc)
    tensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    return str(client.infer(model, [tensor]).get_response().model_version)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_models_that_failed_to_load_are_listed_with_their_error(servers: Servers,
                                                                protocol: str) -> None:
    index = _index(servers, protocol)
    assert index["digits"] == [("1", "READY", "")]
    [(version, state, reason)] = index["broken"]
    assert (version, state) == ("", "UNAVAILABLE")
    assert "broken/config.pbtxt" in reason and "tensorflow_savedmodel" in reason
    [(_, state, reason)] = index["short"]
    assert state == "UNAVAILABLE"
    assert "model 'short': output 'OUTPUT0' has 10 classes but 3 labels" in reason
    assert all(str(servers.repository) not in row[2] for rows in index.values() for row in rows)


def test_a_failed_load_names_the_fault_by_its_path_in_the_repository(servers: Servers) -> None:
    client = thttp.InferenceServerClient(servers.gateway_http)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("broken")
    message = caught.value.message() or ""
    assert "broken/config.pbtxt" in message and str(servers.repository) not in message
    [(_, state, reason)] = _index(servers, "grpc")["broken"]
    assert state == "UNAVAILABLE" and "tensorflow_savedmodel" in reason
    # A model that serves keeps serving, and stays READY, when a reload of it fails.
    with pytest.raises(InferenceServerException, match="was not loaded"):
        client.load_model("digits", files={"file:2/model.onnx": b"not a model"})
    assert _index(servers, "http")["digits"] == [("1", "READY", "")]


def test_ready_true_lists_only_ready_models(servers: Servers) -> None:
    answer = requests.post(f"http://{servers.gateway_http}/v2/repository/index",
                           json={"ready": True}, timeout=30)
    assert answer.status_code == 200
    states = {(row["name"], row["state"]) for row in answer.json()}
    assert ("digits", "READY") in states
    assert {state for _, state in states} == {"READY"}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_unloaded_model_is_unavailable_unloaded(servers: Servers, protocol: str) -> None:
    lib = thttp if protocol == "http" else tgrpc
    client = lib.InferenceServerClient(
        servers.gateway_http if protocol == "http" else servers.gateway_grpc)
    client.unload_model("spare")
    assert not client.is_model_ready("spare")
    for side in ("http", "grpc"):
        assert _index(servers, side)["spare"] == [("1", "UNAVAILABLE", "unloaded")]
    client.load_model("spare")
    assert _index(servers, protocol)["spare"] == [("1", "READY", "")]


def test_a_load_with_files_is_served_apart_from_the_repository(servers: Servers,
                                                              stage: Path) -> None:
    before = _tree(servers.repository)
    client = tgrpc.InferenceServerClient(servers.gateway_grpc)
    client.load_model("again", files={"file:3/model.onnx": ONNX})
    assert _version(servers, "again") == "3"
    assert _tree(servers.repository) == before
    assert len(_staged(stage)) == 1
    # A load without files goes back to the repository's own files, and leaves the stage.
    client.load_model("again")
    assert _version(servers, "again") == "1"
    assert not client.is_model_ready("again", "3")
    assert _staged(stage) == []
    assert _tree(servers.repository) == before


def test_a_new_model_from_files_leaves_no_trace_once_unloaded(servers: Servers,
                                                             stage: Path) -> None:
    before = _tree(servers.repository)
    client = thttp.InferenceServerClient(servers.gateway_http)
    client.load_model("fresh", config=FRESH_CONFIG, files={"file:1/model.onnx": ONNX})
    assert _version(servers, "fresh") == "1"
    assert _index(servers, "http")["fresh"] == [("1", "READY", "")]
    assert _tree(servers.repository) == before
    client.unload_model("fresh")
    assert _staged(stage) == []
    assert _index(servers, "grpc")["fresh"] == [("1", "UNAVAILABLE", "unloaded")]
    assert _tree(servers.repository) == before


def test_a_restarted_worker_serves_the_repository_s_own_files(tmp_path: Path,
                                                              stage: Path) -> None:
    repo = tmp_path / "models"
    _copy(repo, "solo")
    with Background(repo) as first:
        tgrpc.InferenceServerClient(first.gateway_grpc).load_model(
            "solo", files={"file:2/model.onnx": ONNX})
        assert _version(first, "solo") == "2"
        assert len(_staged(stage)) == 1
    assert _staged(stage) == []  # a stopped worker leaves no override behind
    with Background(repo) as second:
        assert _version(second, "solo") == "1"
        assert _index(second, "grpc")["solo"] == [("1", "READY", "")]
