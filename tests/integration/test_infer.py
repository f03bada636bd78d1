"""tritonclient (HTTP JSON and binary, gRPC sync and asyncio) against the gateway and the runtime.

Answers must equal onnxruntime / torch called directly on the same model files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
from sklearn.datasets import load_digits

from tests.integration.conftest import Servers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return (load_digits().data[:64] / 16.0).astype(np.float32)


def direct(version: str, x: np.ndarray) -> np.ndarray:
    """The model called in-process, without tensorgate."""
    folder = ROOT / "models" / "digits" / version
    if version == "1":
        session = ort.InferenceSession(str(folder / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        return session.run(["OUTPUT0"], {"INPUT0": x})[0]
    module = torch.jit.load(str(folder / "model.pt"))
    with torch.inference_mode():
        return module(torch.from_numpy(x.copy())).numpy()


def http_infer(url: str, version: str, x: np.ndarray, binary: bool) -> np.ndarray:
    client = thttp.InferenceServerClient(url)
    tensor = thttp.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = [thttp.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    result = client.infer("digits", [tensor], model_version=version, outputs=wanted)
    if not binary:
        assert "data" in result.get_response()["outputs"][0]
    return result.as_numpy("OUTPUT0")


def grpc_infer(url: str, version: str, x: np.ndarray) -> np.ndarray:
    client = tgrpc.InferenceServerClient(url)
    tensor = tgrpc.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("digits", [tensor], model_version=version)
    assert result.get_response().model_version == version
    return result.as_numpy("OUTPUT0")


async def grpc_aio_infer(url: str, version: str, x: np.ndarray) -> np.ndarray:
    async with tgrpc_aio.InferenceServerClient(url) as client:
        tensor = tgrpc_aio.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = await client.infer("digits", [tensor], model_version=version)
        return result.as_numpy("OUTPUT0")


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_through_gateway_matches_direct(servers: Servers, rows: np.ndarray, version: str,
                                             binary: bool) -> None:
    x = rows[:5]
    got = http_infer(servers.gateway_http, version, x, binary)
    np.testing.assert_allclose(got, direct(version, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("target", ["gateway", "runtime"])
def test_grpc_sync_matches_direct(servers: Servers, rows: np.ndarray, version: str,
                                  target: str) -> None:
    url = servers.gateway_grpc if target == "gateway" else servers.runtime_grpc
    x = rows[5:12]
    np.testing.assert_allclose(grpc_infer(url, version, x), direct(version, x), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("target", ["gateway", "runtime"])
def test_grpc_asyncio_matches_direct(servers: Servers, rows: np.ndarray, target: str) -> None:
    url = servers.gateway_grpc if target == "gateway" else servers.runtime_grpc
    x = rows[12:13]
    got = asyncio.run(grpc_aio_infer(url, "1", x))
    np.testing.assert_allclose(got, direct("1", x), rtol=1e-5, atol=1e-6)


def test_no_version_means_the_newest(servers: Servers, rows: np.ndarray) -> None:
    client = tgrpc.InferenceServerClient(servers.gateway_grpc)
    tensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(rows[:1])
    result = client.infer("digits", [tensor])
    assert result.get_response().model_version == "2"


def test_concurrent_callers_are_batched_and_each_gets_its_own_answer(
        servers: Servers, rows: np.ndarray) -> None:
    client = tgrpc.InferenceServerClient(servers.gateway_grpc)
    before = client.get_inference_statistics("digits", "1", as_json=True)["model_stats"][0]

    async def call_all() -> list[np.ndarray]:
        async with tgrpc_aio.InferenceServerClient(servers.gateway_grpc) as aio:
            async def one(i: int) -> np.ndarray:
                tensor = tgrpc_aio.InferInput("INPUT0", [1, 64], "FP32")
                tensor.set_data_from_numpy(rows[i : i + 1])
                result = await aio.infer("digits", [tensor], model_version="1")
                return result.as_numpy("OUTPUT0")

            return await asyncio.gather(*(one(i) for i in range(64)))

    answers = asyncio.run(call_all())
    expected = direct("1", rows)
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(answer[0], expected[i], rtol=1e-5, atol=1e-6)
    after = client.get_inference_statistics("digits", "1", as_json=True)["model_stats"][0]
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == 64
    assert executions < inferences
