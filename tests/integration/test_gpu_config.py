"""Models whose config asks for the GPU paths (TensorRT in Triton's config.pbtxt, CUDA graphs,
half precision), served by real servers through tritonclient: correct answers wherever they
run, and exactly one warning for each thing that falls back."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient

from common.model_config import load_model_config
from runtime.backends.onnx import OnnxBackend
from runtime.backends.torch import TorchBackend
from tests.integration.conftest import ROOT, Background, Servers

DIGITS = ROOT / "models" / "digits"
TRT_PBTXT = """\
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching { preferred_batch_size: [ 8, 64 ] }
instance_group [ { count: 2, kind: KIND_AUTO } ]
optimization {
  execution_accelerators { gpu_execution_accelerator: [ {
    name: "tensorrt"
    parameters { key: "precision_mode" value: "FP16" }
  } ] }
  cuda { graphs: true }
}
"""
HALF_YAML = """\
max_batch_size: 64
dynamic_batching: {preferred_batch_size: [64]}
instance_count: 2
precision: fp16
inputs: [{name: INPUT0, datatype: FP32, shape: [64]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [10]}]
"""
ROWS = np.random.default_rng(3).random((5, 64), dtype=np.float32)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Servers, list[str]]]:
    repo = tmp_path_factory.mktemp("gpu-config")
    (repo / "trt" / "1").mkdir(parents=True)
    shutil.copyfile(DIGITS / "1" / "model.onnx", repo / "trt" / "1" / "model.onnx")
    (repo / "trt" / "config.pbtxt").write_text(TRT_PBTXT)
    (repo / "half" / "2").mkdir(parents=True)
    shutil.copyfile(DIGITS / "2" / "model.pt", repo / "half" / "2" / "model.pt")
    (repo / "half" / "config.yaml").write_text(HALF_YAML)
    records = Records()
    logger = logging.getLogger("tensorgate")
    logger.addHandler(records)
    try:
        with Background(repo) as servers:
            yield servers, records.messages
    finally:
        logger.removeHandler(records)


def expected(version: int) -> np.ndarray:
    """The shipped digits version's fp32 answers, in-process."""
    config = dataclasses.replace(load_model_config(DIGITS / "config.yaml", "digits"),
                                 device="cpu")
    if version == 1:
        return OnnxBackend(DIGITS / "1" / "model.onnx", config, 1).run([ROWS])[0]
    return TorchBackend(DIGITS / "2" / "model.pt", config, 1).run([ROWS])[0]


def infer(servers: Servers, model: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(servers.gateway_http)
    try:
        data = httpclient.InferInput("INPUT0", list(ROWS.shape), "FP32")
        data.set_data_from_numpy(ROWS, binary_data=True)
        result = client.infer(model, [data])
        answer = result.as_numpy("OUTPUT0")
        assert answer is not None
        return answer
    finally:
        client.close()


def test_a_tensorrt_model_serves_correct_answers_where_tensorrt_is_absent(
        served: tuple[Servers, list[str]]) -> None:
    servers, _ = served
    answer = infer(servers, "trt")
    assert answer.dtype == np.float32 and answer.shape == (5, 10)
    # TensorRT absent, fp16 is not applied: the answers are the fp32 model's.
    np.testing.assert_allclose(answer, expected(1), rtol=1e-5, atol=1e-6)


def test_a_half_precision_model_keeps_its_datatypes(served: tuple[Servers, list[str]]) -> None:
    servers, _ = served
    answer = infer(servers, "half")
    assert answer.dtype == np.float32 and answer.shape == (5, 10)
    reference = expected(2)
    assert not np.array_equal(answer, reference), "computed in fp32"
    np.testing.assert_allclose(answer, reference, atol=1e-2)


def test_each_fallback_is_warned_once_naming_the_model(
        served: tuple[Servers, list[str]]) -> None:
    _, messages = served
    tensorrt = [m for m in messages if "TensorRT" in m]
    graphs = [m for m in messages if "cuda.graphs" in m]
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        gpu = False
    if gpu:
        pytest.skip("a CUDA GPU is visible: graphs are used, TensorRT may be")
    assert len(tensorrt) == 1, tensorrt
    assert "model trt" in tensorrt[0] and "runs on the CPU" in tensorrt[0]
    assert len(graphs) == 1, graphs
    assert "model trt" in graphs[0] and "without CUDA graphs" in graphs[0]
    assert not [m for m in messages if "model half" in m], "nothing of half's falls back"


def test_the_model_config_shows_the_accelerator_in_tritons_names(
        served: tuple[Servers, list[str]]) -> None:
    servers, _ = served
    client = httpclient.InferenceServerClient(servers.gateway_http)
    try:
        config = client.get_model_config("trt")
    finally:
        client.close()
    optimization = config["optimization"]
    assert optimization["execution_accelerators"]["gpu_execution_accelerator"] == [
        {"name": "tensorrt", "parameters": {"precision_mode": "FP16"}}]
    assert optimization["cuda"]["graphs"] is True
