"""`model.pt2` in the PyTorch backend: a torch.export program served as TorchScript is, its
signature read from it, and the files and programs it cannot serve refused by name."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.model_config import ConfigError, ModelConfig, TensorSpec
from runtime.backends import detect_backend
from runtime.backends.torch import TorchBackend
from runtime.repository import scan_model
from tests.unit.pt2_helpers import eager, export

ROOT = Path(__file__).resolve().parents[2]
TORCHSCRIPT = ROOT / "models" / "digits" / "2" / "model.pt"
RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pt2")
    return {"dynamic": export(folder / "dynamic" / "model.pt2"),
            "static": export(folder / "static" / "model.pt2", dynamic=False)}


def config(tmp_path: Path, **keys: object) -> ModelConfig:
    base: dict[str, object] = {"max_batch_size": 8, "device": "cpu"}
    return ModelConfig(name="scorer", source=tmp_path / "config.yaml", **(base | keys))


def reference(features: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        found = eager()(torch.from_numpy(features), torch.from_numpy(bias))
    return {k: v.numpy() for k, v in found.items()}


def test_the_signature_comes_from_the_program_and_answers_equal_the_module(
        programs: dict[str, Path], tmp_path: Path) -> None:
    backend = TorchBackend(programs["dynamic"], config(tmp_path), 1)
    assert backend.inputs == (TensorSpec("features", "FP32", (4,)),
                              TensorSpec("bias", "FP32", (3,)))
    assert backend.outputs == (TensorSpec("scores", "FP32", (3,)),
                               TensorSpec("total", "FP32", ()))
    for rows in (1, 5, 8):
        features = RNG.random((rows, 4), dtype=np.float32)
        bias = RNG.random((rows, 3), dtype=np.float32)
        scores, total = backend.run([features, bias])
        wanted = reference(features, bias)
        np.testing.assert_allclose(scores, wanted["scores"], rtol=1e-6)
        np.testing.assert_allclose(total, wanted["total"], rtol=1e-6)


def test_a_program_without_a_dynamic_batch_is_refused_naming_the_fix(
        programs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        TorchBackend(programs["static"], config(tmp_path), 1)
    message = str(caught.value)
    assert "'max_batch_size'" in message and "fixed batch of 2" in message
    assert "torch.export.Dim('batch', max=8)" in message and "max_batch_size: 0" in message
    # Unbatched, the same program serves its exported shape.
    backend = TorchBackend(programs["static"], config(tmp_path, max_batch_size=0), 1)
    assert backend.inputs[0] == TensorSpec("features", "FP32", (2, 4))
    assert backend.run([np.ones((2, 4), np.float32), np.zeros((2, 3), np.float32)])[1] \
        .tolist() == [4.0, 4.0]


def test_a_batch_range_short_of_max_batch_size_is_refused(programs: dict[str, Path],
                                                          tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"takes batches of 1 to 16, not every size from 1 "
                                          r"to 32"):
        TorchBackend(programs["dynamic"], config(tmp_path, max_batch_size=32), 1)


def test_a_config_that_disagrees_with_the_program_is_refused(programs: dict[str, Path],
                                                             tmp_path: Path) -> None:
    outputs = (TensorSpec("scores", "FP32", (3,)), TensorSpec("total", "FP32", ()))
    cases = {
        "is FP32 in the program, not FP16": (TensorSpec("features", "FP16", (4,)),
                                              TensorSpec("bias", "FP32", (3,))),
        r"has shape \[3\] in the program .*, not \[5\]": (TensorSpec("features", "FP32", (4,)),
                                                          TensorSpec("bias", "FP32", (5,))),
        "in the order of forward's arguments": (TensorSpec("bias", "FP32", (3,)),
                                                TensorSpec("features", "FP32", (4,))),
        "the program has 2 inputs": (TensorSpec("features", "FP32", (4,)),),
    }
    for match, inputs in cases.items():
        with pytest.raises(ConfigError, match=match):
            TorchBackend(programs["dynamic"], config(tmp_path, inputs=inputs, outputs=outputs), 1)
    # Other names, in order, are the caller's names for the program's tensors.
    named = (TensorSpec("INPUT0", "FP32", (4,)), TensorSpec("INPUT1", "FP32", (-1,)))
    renamed = (TensorSpec("OUTPUT0", "FP32", (3,)), TensorSpec("OUTPUT1", "FP32", ()))
    backend = TorchBackend(programs["dynamic"], config(tmp_path, inputs=named, outputs=renamed),
                           1)
    assert [s.name for s in backend.inputs] == ["INPUT0", "INPUT1"]
    features, bias = np.ones((2, 4), np.float32), np.zeros((2, 3), np.float32)
    scores, total = backend.run([features, bias])
    np.testing.assert_allclose(scores, reference(features, bias)["scores"], rtol=1e-6)
    assert total.tolist() == [4.0, 4.0]


def test_files_whose_content_is_not_their_name_are_refused(programs: dict[str, Path],
                                                           tmp_path: Path) -> None:
    shutil.copyfile(TORCHSCRIPT, tmp_path / "model.pt2")
    with pytest.raises(ConfigError, match=r"holds a TorchScript model, which is served "
                                          r"from a file named model\.pt; rename it"):
        TorchBackend(tmp_path / "model.pt2", config(tmp_path), 1)
    (tmp_path / "junk.pt2").write_bytes(b"not a model at all")
    with pytest.raises(ConfigError, match=r"not a PyTorch model this runtime reads: expected a "
                                          r"torch.export program \(written by torch.export.save"
                                          r"\) or an AOTInductor package"):
        TorchBackend(tmp_path / "junk.pt2", config(tmp_path), 1)
    shutil.copyfile(programs["dynamic"], tmp_path / "model.pt")
    with pytest.raises(ConfigError, match=r"holds a torch\.export program, which is "
                                          r"served from a file named model\.pt2"):
        TorchBackend(tmp_path / "model.pt", config(tmp_path), 1)


def test_a_program_under_another_name_is_told_by_its_content(programs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    shutil.copyfile(programs["dynamic"], tmp_path / "scorer.bin")
    backend = TorchBackend(tmp_path / "scorer.bin", config(tmp_path), 1)
    assert [s.name for s in backend.outputs] == ["scores", "total"]


def test_the_repository_finds_model_pt2_and_refuses_two_pytorch_files(
        programs: dict[str, Path], tmp_path: Path) -> None:
    version = tmp_path / "scorer" / "1"
    version.mkdir(parents=True)
    shutil.copyfile(programs["dynamic"], version / "model.pt2")
    (tmp_path / "scorer" / "config.yaml").write_text("max_batch_size: 8\ndevice: cpu\n")
    [source] = scan_model(tmp_path / "scorer")
    assert (source.backend, source.artifact.name) == ("torch", "model.pt2")
    shutil.copyfile(TORCHSCRIPT, version / "model.pt")
    with pytest.raises(ConfigError, match=r"model\.pt and model\.pt2 are both there"):
        detect_backend(version, source.config)


def test_precision_runs_a_program_under_autocast_with_its_datatypes_kept(
        programs: dict[str, Path], tmp_path: Path) -> None:
    backend = TorchBackend(programs["dynamic"], config(tmp_path, precision="bf16"), 1)
    features = RNG.random((3, 4), dtype=np.float32)
    bias = RNG.random((3, 3), dtype=np.float32)
    scores, _ = backend.run([features, bias])
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, reference(features, bias)["scores"], atol=5e-2)


def test_tensorrt_and_cuda_keys_are_refused_or_named_as_for_torchscript(
        programs: dict[str, Path], tmp_path: Path) -> None:
    from common.model_spec import Accelerator, Optimization

    trt = Optimization(gpu_accelerators=(Accelerator("tensorrt"),))
    with pytest.raises(ConfigError, match="TensorRT runs ONNX models only"):
        TorchBackend(programs["dynamic"], config(tmp_path, optimization=trt), 1)
    graphs = dataclasses.replace(Optimization(), cuda_graphs=True)
    backend = TorchBackend(programs["dynamic"], config(tmp_path, optimization=graphs), 1)
    assert backend.cuda is None  # on the CPU: named in a warning, run without
