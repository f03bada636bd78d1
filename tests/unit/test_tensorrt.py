"""TensorRT through Triton's accelerator config: its provider and options where it loads, one
warning naming the model and the fallback where it does not."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from common.model_config import ConfigError, load_model_config
from common.model_spec import Optimization
from runtime.backends import onnx_options
from runtime.backends.onnx import OnnxBackend
from runtime.backends.torch import TorchBackend
from tests.unit.gpu_helpers import (
    DIGITS,
    GRAPHS,
    ONNX,
    TRT,
    config,
)


@pytest.fixture()
def gpu_device(monkeypatch: pytest.MonkeyPatch) -> OnnxBackend:
    """A backend as on a GPU, for its provider choice only (no session is created)."""
    monkeypatch.setattr("runtime.backends.onnx._load_cuda_libraries", lambda: None)
    backend = object.__new__(OnnxBackend)
    backend.device = "cuda:0"
    return backend


def test_tensorrt_comes_first_with_tritons_options_where_it_loads(
        gpu_device: OnnxBackend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("runtime.backends.onnx.tensorrt_loads", lambda: None)
    providers = gpu_device._providers(config(optimization=dataclasses.replace(
        TRT, cuda_graphs=True)), ONNX, quiet=False)
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider"
    assert options["trt_fp16_enable"] is True and options["trt_cuda_graph_enable"] is True
    cache = Path(str(options["trt_engine_cache_path"]))
    assert cache.is_dir() and cache.is_relative_to(tmp_path / "tensorgate" / "tensorrt" / "m")
    assert [p if isinstance(p, str) else p[0] for p in providers[1:]] == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers[1][1]["enable_cuda_graph"] == "1"


def test_tensorrt_that_does_not_load_is_warned_once_and_cuda_serves(
        gpu_device: OnnxBackend, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("runtime.backends.onnx.tensorrt_loads", lambda: "libnvinfer missing")
    with caplog.at_level(logging.WARNING, logger="tensorgate.runtime"):
        providers = gpu_device._providers(config(optimization=TRT), ONNX, quiet=False)
        gpu_device._providers(config(optimization=TRT), ONNX, quiet=True)
    assert [p if isinstance(p, str) else p[0] for p in providers] == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert len(caplog.records) == 1
    assert "model m" in caplog.text and "libnvinfer missing" in caplog.text
    assert "CUDA provider" in caplog.text


def test_the_tensorrt_probe_reports_why_where_its_libraries_are_absent() -> None:
    onnx_options.tensorrt_loads.cache_clear()
    problem = onnx_options.tensorrt_loads()
    if problem is None:
        pytest.skip("TensorRT's libraries load on this machine")
    assert "TensorRT" in problem or "libraries do not load" in problem


def test_an_engine_cache_belongs_to_one_artifact(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"one")
    first = onnx_options.engine_cache(config(), artifact)
    artifact.write_bytes(b"other")
    assert onnx_options.engine_cache(config(), artifact) != first
    assert first.parent == tmp_path / "tensorgate" / "tensorrt" / "m"


def test_tensorrt_the_session_did_not_take_is_warned_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # As on a GPU machine whose TensorRT libraries load but whose session still ends up without
    # TensorRT: here the session falls back to the CPU (no GPU), which `auto` allows.
    if "CUDAExecutionProvider" in ort.InferenceSession(
            str(ONNX), providers=["CUDAExecutionProvider"]).get_providers():
        pytest.skip("the CUDA provider loads here: the session would take the GPU")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("runtime.backends.onnx.resolve_device", lambda device: "cuda:0")
    monkeypatch.setattr("runtime.backends.onnx._load_cuda_libraries", lambda: None)
    monkeypatch.setattr("runtime.backends.onnx.tensorrt_loads", lambda: None)
    digits = dataclasses.replace(load_model_config(DIGITS / "config.yaml", "digits"),
                                 device="auto", optimization=TRT)
    with caplog.at_level(logging.WARNING, logger="tensorgate.runtime"):
        backend = OnnxBackend(ONNX, digits, 1)
        OnnxBackend(ONNX, digits, 1, quiet=True)
    tensorrt = [r.getMessage() for r in caplog.records if "TensorRT" in r.getMessage()]
    assert tensorrt == ["model digits: optimization.execution_accelerators asks for TensorRT, "
                        "which is not used: the session did not take it; it runs on the CPU"]
    assert backend.device == "cpu"
    assert backend.run([np.zeros((2, 64), np.float32)])[0].shape == (2, 10)


@pytest.mark.parametrize(("changes", "key"), [
    ({"precision": "fp16"}, "key 'precision': model m does not run in fp16 on device cuda:0"),
    ({"optimization": GRAPHS}, "key 'optimization.cuda.graphs': ONNX Runtime cannot capture"),
])
def test_a_session_the_options_break_is_a_load_error_naming_the_key(
        monkeypatch: pytest.MonkeyPatch, changes: dict, key: str) -> None:
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    def refuse(*args: object, **kwargs: object) -> None:
        raise ort_state.Fail("no kernel for Conv(float16)")

    monkeypatch.setattr(onnx_options.ort, "InferenceSession", refuse)
    with pytest.raises(ConfigError) as caught:
        onnx_options.session("model.onnx", ort.SessionOptions(), [], config(**changes),
                             "cuda:0")
    assert key in str(caught.value) and "no kernel for Conv(float16)" in str(caught.value)
    with pytest.raises(ort_state.Fail):  # nothing of ours to blame: ONNX Runtime's own error
        onnx_options.session("model.onnx", ort.SessionOptions(), [], config(), "cuda:0")


def test_a_torchscript_model_asking_for_tensorrt_is_refused() -> None:
    digits = dataclasses.replace(load_model_config(DIGITS / "config.yaml", "digits"),
                                 device="cpu", optimization=TRT)
    with pytest.raises(ConfigError, match="TensorRT runs ONNX models only"):
        TorchBackend(DIGITS / "2" / "model.pt", digits, 1)


def test_an_onnx_model_setting_channels_last_is_refused() -> None:
    digits = dataclasses.replace(load_model_config(DIGITS / "config.yaml", "digits"),
                                 device="cpu", optimization=Optimization(channels_last=True))
    with pytest.raises(ConfigError) as caught:
        OnnxBackend(ONNX, digits, 1)
    assert "key 'optimization.cuda.channels_last': PyTorch models only" in str(caught.value)
