"""The classification extension through tritonclient (HTTP and gRPC): `class_count=k` answers
the top k classes per row as "score:index[:label]", with labels from config.pbtxt or config.yaml.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Background, Servers

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "digits" / "1" / "model.onnx"
LABELS = [f"digit-{i}" for i in range(10)]

PBTXT = """\
name: "named"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 64 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 10 ], label_filename: "labels.txt" } ]
"""
# A long queue delay with a preferred size of 4: four concurrent requests form one batch.
YAML = ("max_batch_size: 8\n"
        "dynamic_batching: {max_queue_delay_microseconds: 5000000, preferred_batch_size: [4]}\n"
        f"labels: {{OUTPUT0: [{', '.join(LABELS)}]}}\n")


def _model(repo: Path, name: str, config_name: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    shutil.copyfile(MODEL, repo / name / "1" / "model.onnx")
    (repo / name / config_name).write_text(config)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    repo = tmp_path_factory.mktemp("classes") / "models"
    _model(repo, "plain", "config.yaml", "max_batch_size: 8\n")
    _model(repo, "named", "config.pbtxt", PBTXT)
    (repo / "named" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    _model(repo, "inline", "config.yaml", YAML)
    with Background(repo) as running:
        yield running


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return (load_digits().data[:3] / 16.0).astype(np.float32)


def _direct(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    return session.run(["OUTPUT0"], {"INPUT0": x})[0]


def _infer(servers: Servers, protocol: str, model: str, x: np.ndarray, k: int) -> np.ndarray:
    """`protocol`: grpc, http (binary outputs) or json (outputs as JSON)."""
    lib = tgrpc if protocol == "grpc" else thttp
    address = servers.gateway_grpc if protocol == "grpc" else servers.gateway_http
    client = lib.InferenceServerClient(address)
    tensor = lib.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    output = (thttp.InferRequestedOutput("OUTPUT0", binary_data=False, class_count=k)
              if protocol == "json" else lib.InferRequestedOutput("OUTPUT0", class_count=k))
    return client.infer(model, [tensor], outputs=[output]).as_numpy("OUTPUT0")


def _check(answer: np.ndarray, x: np.ndarray, k: int, labels: list[str] | None) -> None:
    """What a tritonclient user does: split each element on ':' and read score and index."""
    expected = _direct(x)
    assert answer.shape == (len(x), k)
    for row, probs in zip(answer, expected):
        # NOTE: tritonclient gives JSON outputs' BYTES elements as str, binary ones as bytes.
        parts = [(v.decode() if isinstance(v, bytes) else v).split(":") for v in row]
        indices = [int(p[1]) for p in parts]
        assert indices == list(np.argsort(-probs, kind="stable")[:k])
        np.testing.assert_allclose([float(p[0]) for p in parts], probs[indices], atol=1e-6)
        assert all(len(p[0].split(".")[1]) == 6 for p in parts)  # C's "%f", as Triton
        assert [p[2:] for p in parts] == ([[labels[i]] for i in indices] if labels
                                          else [[]] * k)


@pytest.mark.parametrize("protocol", ["http", "json", "grpc"])
def test_top_k_without_labels(servers: Servers, rows: np.ndarray, protocol: str) -> None:
    _check(_infer(servers, protocol, "plain", rows, 3), rows, 3, None)


@pytest.mark.parametrize("protocol", ["http", "json", "grpc"])
def test_labels_from_label_filename_in_config_pbtxt(servers: Servers, rows: np.ndarray,
                                                    protocol: str) -> None:
    _check(_infer(servers, protocol, "named", rows, 2), rows, 2, LABELS)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("k", [11, -1])
def test_a_class_count_out_of_range_is_refused(servers: Servers, rows: np.ndarray,
                                               protocol: str, k: int) -> None:
    with pytest.raises(InferenceServerException) as caught:
        _infer(servers, protocol, "plain", rows, k)
    assert "'classification' must be 1 to 10 classes" in str(caught.value)
    assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


def test_classification_requests_batch_with_plain_ones(servers: Servers,
                                                       rows: np.ndarray) -> None:
    """Four concurrent requests, two asking classes, two the scores: one batch, and each gets
    its own answer (gRPC: a client per thread)."""
    client = thttp.InferenceServerClient(servers.gateway_http)
    before = client.get_inference_statistics("inline")["model_stats"][0]

    def call(i: int) -> np.ndarray:
        x = rows[i % len(rows)][None, :]
        if i % 2:
            return _infer(servers, "grpc", "inline", x, 4)
        tensor = tgrpc.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        grpc_client = tgrpc.InferenceServerClient(servers.gateway_grpc)
        return grpc_client.infer("inline", [tensor]).as_numpy("OUTPUT0")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(call, range(4)))
    for i, answer in enumerate(answers):
        x = rows[i % len(rows)][None, :]
        if i % 2:
            _check(answer, x, 4, LABELS)
        else:
            np.testing.assert_allclose(answer, _direct(x), rtol=1e-5, atol=1e-6)
    after = client.get_inference_statistics("inline")["model_stats"][0]
    assert after["inference_count"] - before.get("inference_count", 0) == 4
    assert after["execution_count"] - before.get("execution_count", 0) == 1


def test_classification_is_listed_among_the_extensions(servers: Servers) -> None:
    assert "classification" in thttp.InferenceServerClient(
        servers.gateway_http).get_server_metadata()["extensions"]
