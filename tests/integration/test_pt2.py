"""`model.pt2` end to end: a torch.export program served through a real runtime and gateway to
tritonclient (HTTP binary and JSON, gRPC, callers at once sharing batches), answers equal to
the eager module's; programs the runtime cannot serve are listed unavailable with the reason;
uploads with a repository load (tritonclient's load_model with files) as well."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Background, Servers
from tests.unit.pt2_helpers import eager, export

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ("max_batch_size: 8\ndevice: cpu\n"
          "dynamic_batching: {max_queue_delay_microseconds: 2000}\n")


def build_repository(root: Path) -> Path:
    """`scorer`: a program with a dynamic batch; `fixed`: one without; `wrong`: TorchScript
    under the name model.pt2."""
    export(root / "scorer" / "1" / "model.pt2")
    export(root / "fixed" / "1" / "model.pt2", dynamic=False)
    (root / "wrong" / "1").mkdir(parents=True)
    shutil.copyfile(ROOT / "models" / "digits" / "2" / "model.pt", root / "wrong" / "1" /
                    "model.pt2")
    for name in ("scorer", "fixed", "wrong"):
        (root / name / "config.yaml").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with Background(build_repository(tmp_path_factory.mktemp("pt2"))) as running:
        yield running


def rows(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((count, 4), dtype=np.float32), rng.random((count, 3), dtype=np.float32))


def expected(features: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        found = eager()(torch.from_numpy(features), torch.from_numpy(bias))
    return found["scores"].numpy(), found["total"].numpy()


def http_infer(url: str, features: np.ndarray, bias: np.ndarray, binary: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    client = thttp.InferenceServerClient(url)
    tensors = [thttp.InferInput("features", list(features.shape), "FP32"),
               thttp.InferInput("bias", list(bias.shape), "FP32")]
    tensors[0].set_data_from_numpy(features, binary_data=binary)
    tensors[1].set_data_from_numpy(bias, binary_data=binary)
    wanted = [thttp.InferRequestedOutput(n, binary_data=binary) for n in ("scores", "total")]
    result = client.infer("scorer", tensors, outputs=wanted)
    return result.as_numpy("scores"), result.as_numpy("total")


def grpc_infer(url: str, features: np.ndarray, bias: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    client = tgrpc.InferenceServerClient(url)
    tensors = [tgrpc.InferInput("features", list(features.shape), "FP32"),
               tgrpc.InferInput("bias", list(bias.shape), "FP32")]
    tensors[0].set_data_from_numpy(features)
    tensors[1].set_data_from_numpy(bias)
    result = client.infer("scorer", tensors)
    return result.as_numpy("scores"), result.as_numpy("total")


def check(got: tuple[np.ndarray, np.ndarray], features: np.ndarray, bias: np.ndarray) -> None:
    for answer, wanted in zip(got, expected(features, bias)):
        assert answer.shape == wanted.shape
        np.testing.assert_allclose(answer, wanted, rtol=1e-5, atol=1e-6)


def test_metadata_is_the_programs_signature(served: Servers) -> None:
    meta = thttp.InferenceServerClient(served.gateway_http).get_model_metadata("scorer")
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("features", "FP32", [-1, 4]), ("bias", "FP32", [-1, 3])]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [
        ("scores", [-1, 3]), ("total", [-1])]


def test_answers_equal_the_eager_module_over_http_and_grpc(served: Servers) -> None:
    for count, binary in ((1, True), (5, False), (8, True)):
        features, bias = rows(count, count)
        check(http_infer(served.gateway_http, features, bias, binary), features, bias)
    features, bias = rows(3, 99)
    check(grpc_infer(served.gateway_grpc, features, bias), features, bias)


def test_callers_at_once_each_get_their_own_rows(served: Servers) -> None:
    inputs = [rows(1 + i % 3, 100 + i) for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda pair: grpc_infer(served.gateway_grpc, *pair), inputs))
    for (features, bias), got in zip(inputs, answers):
        check(got, features, bias)


def test_programs_it_cannot_serve_are_unavailable_with_the_reason(served: Servers) -> None:
    client = thttp.InferenceServerClient(served.gateway_http)
    assert not client.is_model_ready("fixed") and not client.is_model_ready("wrong")
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["scorer"]["state"] == "READY"
    assert "fixed batch of 2" in index["fixed"]["reason"]
    assert "torch.export.Dim('batch', max=8)" in index["fixed"]["reason"]
    assert "holds a TorchScript model" in index["wrong"]["reason"]
    assert "named model.pt; rename it" in index["wrong"]["reason"]


def test_a_program_uploaded_with_a_load_is_served_and_an_impostor_refused(
        served: Servers, tmp_path: Path) -> None:
    config = json.dumps({"name": "uploaded", "backend": "pytorch", "max_batch_size": 8})
    program = export(tmp_path / "model.pt2").read_bytes()
    client = thttp.InferenceServerClient(served.gateway_http)
    client.load_model("uploaded", config=config, files={"file:1/model.pt2": program})
    meta = client.get_model_metadata("uploaded")
    assert [t["name"] for t in meta["inputs"]] == ["features", "bias"]
    features, bias = rows(2, 7)
    tensors = [thttp.InferInput("features", [2, 4], "FP32"),
               thttp.InferInput("bias", [2, 3], "FP32")]
    tensors[0].set_data_from_numpy(features)
    tensors[1].set_data_from_numpy(bias)
    result = client.infer("uploaded", tensors)
    check((result.as_numpy("scores"), result.as_numpy("total")), features, bias)
    impostor = (ROOT / "models" / "digits" / "2" / "model.pt").read_bytes()
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("uploaded", config=config, files={"file:2/model.pt2": impostor})
    assert caught.value.status() == "400"
    assert "holds a TorchScript model" in (caught.value.message() or "")
    assert not client.is_model_ready("uploaded", "2") and client.is_model_ready("uploaded", "1")
