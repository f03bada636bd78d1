"""The ONNX backend's device: a GPU named in the config needs the CUDA provider to have loaded."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from common.model_config import ConfigError, load_model_config
from runtime.backends import onnx as onnx_backend
from runtime.backends.onnx import OnnxBackend

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"


def _config(device: str):
    config = load_model_config(DIGITS / "config.yaml", "digits")
    return dataclasses.replace(config, device=device)


def _cuda_works() -> bool:
    session = ort.InferenceSession(str(DIGITS / "1" / "model.onnx"),
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    return onnx_backend.CUDA in session.get_providers()


def test_cpu_device_runs_on_the_cpu_provider() -> None:
    backend = OnnxBackend(DIGITS / "1" / "model.onnx", _config("cpu"), 1)
    assert backend.device == "cpu"
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    out = backend.run([np.zeros((2, 64), np.float32)])[0]
    assert out.shape == (2, 10)


def test_a_named_gpu_without_the_cuda_provider_is_a_clear_error() -> None:
    if _cuda_works():
        pytest.skip("the CUDA provider loads on this machine")
    with pytest.raises(ConfigError) as caught:
        OnnxBackend(DIGITS / "1" / "model.onnx", _config("cuda:0"), 1)
    message = str(caught.value)
    assert "key 'device': cuda:0" in message
    assert "CUDA execution provider" in message
    assert "device: cpu" in message


def test_auto_falls_back_to_the_cpu_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tensorgate.runtime"):
        assert onnx_backend._without_cuda(_config("auto")) == "cpu"
    assert "running on the CPU" in caplog.text
    assert "digits" in caplog.text


def test_cpu_sessions_run_through_onnx_runtimes_own_entry_with_the_same_answers() -> None:
    backend = OnnxBackend(DIGITS / "1" / "model.onnx", _config("cpu"), 1)
    assert backend._direct is not None  # the wrapper's checks skipped on the CPU provider
    rows = np.random.default_rng(3).random((3, 64), dtype=np.float32)
    (direct,) = backend.run([rows])
    (wrapped,) = backend.session.run(None, {backend.session.get_inputs()[0].name: rows})
    assert direct.shape == (3, 10) and np.array_equal(direct, wrapped)


def test_a_session_with_a_gpu_provider_keeps_the_wrapper_and_its_cpu_fallback() -> None:
    class OnGpu:
        _sess = ort.InferenceSession(str(DIGITS / "1" / "model.onnx"),
                                     providers=["CPUExecutionProvider"])._sess

        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    assert onnx_backend._direct_run(OnGpu()) is None  # type: ignore[arg-type]
