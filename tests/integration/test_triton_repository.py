"""A Triton-style repository (config.pbtxt only) served unchanged, called with tritonclient.

The runtime and gateway run in-process; answers must equal the model files run directly, and the
config endpoint must report what the pbtxt said.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Background, Servers

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"

SIGNATURE = """\
max_batch_size: 64
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 64 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 10 ] } ]
"""

ONNX_CONFIG = f"""\
name: "digits_onnx"
platform: "onnxruntime_onnx"
{SIGNATURE}
dynamic_batching {{
  preferred_batch_size: [ 16, 32 ]
  max_queue_delay_microseconds: 300
  default_queue_policy {{ max_queue_size: 256 }}
}}
instance_group [ {{ count: 2, kind: KIND_CPU }} ]
version_policy: {{ latest: {{ num_versions: 2 }} }}
# Not supported: reported once at load, not silently dropped.
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
model_warmup [ {{ name: "zeros", batch_size: 1, inputs {{
  key: "INPUT0" value: {{ data_type: TYPE_FP32, dims: [ 64 ], zero_data: true }} }} }} ]
"""

# No version_policy: Triton's default serves only the latest version.
TORCH_CONFIG = f"""\
name: "digits_torch"
backend: "pytorch"
{SIGNATURE}
instance_group [ {{ kind: KIND_CPU }} ]
"""


@dataclass
class Running:
    servers: Servers
    warnings: list[str]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _write_repository(repo: Path) -> None:
    for version in (1, 2, 3):
        folder = repo / "digits_onnx" / str(version)
        folder.mkdir(parents=True)
        shutil.copyfile(DIGITS / "1" / "model.onnx", folder / "model.onnx")
    for version in (1, 4):
        folder = repo / "digits_torch" / str(version)
        folder.mkdir(parents=True)
        shutil.copyfile(DIGITS / "2" / "model.pt", folder / "model.pt")
    (repo / "digits_onnx" / "config.pbtxt").write_text(ONNX_CONFIG)
    (repo / "digits_torch" / "config.pbtxt").write_text(TORCH_CONFIG)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = tmp_path_factory.mktemp("triton") / "models"
    _write_repository(repo)
    collect = _Collect()
    logger = logging.getLogger("tensorgate.config")
    logger.addHandler(collect)
    try:
        with Background(repo) as servers:
            logger.removeHandler(collect)
            yield Running(servers, collect.messages)
    finally:
        logger.removeHandler(collect)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return (load_digits().data[:8] / 16.0).astype(np.float32)


def direct_onnx(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(DIGITS / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(["OUTPUT0"], {"INPUT0": x})[0]


def direct_torch(x: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(DIGITS / "2" / "model.pt"))
    with torch.inference_mode():
        return module(torch.from_numpy(x.copy())).numpy()


def test_unsupported_fields_were_reported_once_at_load(running: Running) -> None:
    about_onnx = [m for m in running.warnings if "digits_onnx" in m]
    assert len(about_onnx) == 1, running.warnings
    assert str(running.servers.repository / "digits_onnx" / "config.pbtxt") in about_onnx[0]
    assert about_onnx[0].endswith("ignored: model_warmup, parameters")
    assert not [m for m in running.warnings if "digits_torch" in m]


def test_http_serves_the_versions_the_policy_selects(running: Running,
                                                     rows: np.ndarray) -> None:
    client = thttp.InferenceServerClient(running.servers.gateway_http)
    tensor = thttp.InferInput("INPUT0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = client.infer("digits_onnx", [tensor])
    assert result.get_response()["model_version"] == "3"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), direct_onnx(rows), rtol=1e-5,
                               atol=1e-6)
    assert client.infer("digits_onnx", [tensor], model_version="2").as_numpy("OUTPUT0") \
        is not None
    # latest { num_versions: 2 } of 1, 2, 3: version 1 is not served.
    assert client.get_model_metadata("digits_onnx")["versions"] == ["2", "3"]
    assert not client.is_model_ready("digits_onnx", "1")
    with pytest.raises(InferenceServerException):
        client.infer("digits_onnx", [tensor], model_version="1")


def test_grpc_serves_torchscript_with_triton_s_default_policy(running: Running,
                                                               rows: np.ndarray) -> None:
    client = tgrpc.InferenceServerClient(running.servers.gateway_grpc)
    tensor = tgrpc.InferInput("INPUT0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = client.infer("digits_torch", [tensor])
    assert result.get_response().model_version == "4"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), direct_torch(rows), rtol=1e-5,
                               atol=1e-6)
    assert list(client.get_model_metadata("digits_torch").versions) == ["4"]
    assert not client.is_model_ready("digits_torch", "1")


def _config(running: Running, protocol: str, name: str) -> dict:
    if protocol == "http":
        return thttp.InferenceServerClient(running.servers.gateway_http).get_model_config(name)
    client = tgrpc.InferenceServerClient(running.servers.gateway_grpc)
    return client.get_model_config(name, as_json=True)["config"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_config_endpoint_reports_what_the_pbtxt_said(running: Running,
                                                          protocol: str) -> None:
    config = _config(running, protocol, "digits_onnx")
    assert (config["name"], config["platform"], config["backend"]) == (
        "digits_onnx", "onnxruntime_onnx", "onnxruntime")
    assert config["max_batch_size"] == 64
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] \
        == [("INPUT0", "TYPE_FP32", [64])]
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["output"]] \
        == [("OUTPUT0", "TYPE_FP32", [10])]
    [group] = config["instance_group"]
    assert (group["count"], group["kind"]) == (2, "KIND_CPU")
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [16, 32]
    assert int(batching["max_queue_delay_microseconds"]) == 300
    assert int(batching["default_queue_policy"]["max_queue_size"]) == 256

    torch_config = _config(running, protocol, "digits_torch")
    assert (torch_config["platform"], torch_config["backend"]) == ("pytorch_libtorch", "pytorch")
    [group] = torch_config["instance_group"]
    assert (group["count"], group["kind"]) == (1, "KIND_CPU")
    assert "dynamic_batching" not in torch_config
