"""`precision: fp16 | bf16` on the shipped digits models: answers near the fp32 ones, in the
declared datatypes; combinations that cannot run are refused at load, by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from common.model_config import ConfigError, load_model_config
from runtime.backends.onnx import OnnxBackend
from runtime.backends.torch import TorchBackend, autocast_dtype

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"
ONNX, TORCHSCRIPT = DIGITS / "1" / "model.onnx", DIGITS / "2" / "model.pt"
# Pixel values as the model was trained on them: [0, 1].
ROWS = np.random.default_rng(5).random((16, 64), dtype=np.float32)


def config(precision: str, device: str = "cpu"):
    base = load_model_config(DIGITS / "config.yaml", "digits")
    return dataclasses.replace(base, precision=precision, device=device)


@pytest.mark.parametrize(("backend", "artifact", "precision", "tolerance"), [
    (TorchBackend, TORCHSCRIPT, "bf16", 3e-2),
    (TorchBackend, TORCHSCRIPT, "fp16", 5e-3),
    (OnnxBackend, ONNX, "fp16", 5e-3),
])
def test_half_precision_answers_near_fp32_in_the_declared_datatypes(
        backend: type, artifact: Path, precision: str, tolerance: float) -> None:
    full = backend(artifact, config("fp32"), 1)
    half = backend(artifact, config(precision), 1)
    assert [s.datatype for s in half.inputs] == ["FP32"]
    assert [s.datatype for s in half.outputs] == ["FP32"]
    expected, got = full.run([ROWS])[0], half.run([ROWS])[0]
    assert got.dtype == np.float32 and got.shape == expected.shape == (16, 10)
    assert not np.array_equal(got, expected), "the half-precision run computed in fp32"
    np.testing.assert_allclose(got, expected, atol=tolerance)
    # Probabilities: the top class is kept wherever fp32 was sure of it.
    sure = expected.max(axis=1) > 0.9
    assert (got.argmax(axis=1)[sure] == expected.argmax(axis=1)[sure]).all()


def test_onnx_in_bf16_is_refused_naming_what_it_takes() -> None:
    with pytest.raises(ConfigError) as caught:
        OnnxBackend(ONNX, config("bf16"), 1)
    message = str(caught.value)
    assert "key 'precision'" in message and "digits" in message
    assert "fp32 or fp16" in message and "use precision: fp16" in message


def test_half_precision_on_a_gpu_torch_cannot_use_is_refused_at_load() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: autocast runs there")
    with pytest.raises(ConfigError) as caught:
        autocast_dtype(config("fp16", "cuda:0"), "cuda:0")
    message = str(caught.value)
    assert "model digits cannot run in fp16 on device cuda:0" in message
    assert "precision: fp32" in message


def test_a_type_autocast_turns_off_is_refused_not_ignored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # CPU autocast switches itself off (with a warning only) for a type it lacks: float64 here
    # stands for a torch without CPU fp16 autocast.
    from runtime.backends import torch as torch_backend

    monkeypatch.setitem(torch_backend.AUTOCAST, "fp16", torch.float64)
    with pytest.raises(ConfigError, match=r"cannot run in fp16 on device cpu: torch .* turns "
                                          r"autocast off"):
        TorchBackend(TORCHSCRIPT, config("fp16"), 1)


def test_fp32_runs_the_model_as_it_is() -> None:
    assert autocast_dtype(config("fp32"), "cpu") is None
    backend = TorchBackend(TORCHSCRIPT, config("fp32"), 1)
    assert backend.autocast is None and backend.cuda is None
