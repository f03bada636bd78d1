"""`model.pt2` as an AOTInductor package: compiled here once (about 30 s with a C++ compiler,
the module's one slow step), served with the config's signature, batches of one padded up to
the package's smallest batch, and what a compiled package cannot do refused by name."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common.model_config import ConfigError, ModelConfig, TensorSpec
from runtime.backends.torch import TorchBackend
from tests.unit.pt2_helpers import eager, example

INPUTS = (TensorSpec("features", "FP32", (4,)), TensorSpec("bias", "FP32", (3,)))
OUTPUTS = (TensorSpec("scores", "FP32", (3,)), TensorSpec("total", "FP32", ()))
#: Compiling must stay a small part of the suite; slower than this, the tests are skipped.
COMPILE_CEILING_S = 180


def _compile(path: Path, dynamic: bool) -> None:
    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", max=16)
        shapes = {"features": {0: batch}, "bias": {0: batch}}
    with torch.no_grad():
        program = torch.export.export(eager(), example(), dynamic_shapes=shapes)
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("AOTInductor compiles C++: no C++ compiler on this machine")
    path = tmp_path_factory.mktemp("aoti") / "model.pt2"
    started = time.monotonic()
    _compile(path, dynamic=True)
    if time.monotonic() - started > COMPILE_CEILING_S:
        pytest.skip(f"compiling a tiny package took over {COMPILE_CEILING_S} s here")
    return path


def config(tmp_path: Path, **keys: object) -> ModelConfig:
    base: dict[str, object] = {"max_batch_size": 8, "device": "cpu", "inputs": INPUTS,
                               "outputs": OUTPUTS}
    return ModelConfig(name="compiled", source=tmp_path / "config.yaml", **(base | keys))


def test_a_package_serves_every_batch_size_with_the_modules_answers(package: Path,
                                                                    tmp_path: Path) -> None:
    backend = TorchBackend(package, config(tmp_path), 1)
    rng = np.random.default_rng(3)
    for rows in (1, 2, 8):
        features = rng.random((rows, 4), dtype=np.float32)
        bias = rng.random((rows, 3), dtype=np.float32)
        scores, total = backend.run([features, bias])
        with torch.inference_mode():
            wanted = eager()(torch.from_numpy(features), torch.from_numpy(bias))
        assert scores.shape == (rows, 3) and total.shape == (rows,)
        np.testing.assert_allclose(scores, wanted["scores"].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(total, wanted["total"].numpy(), rtol=1e-5)


def test_what_a_compiled_package_cannot_do_is_refused_by_name(package: Path,
                                                             tmp_path: Path) -> None:
    cases: dict[str, dict[str, object]] = {
        "keys 'inputs' and 'outputs' are required": {"inputs": None},
        "key 'precision'": {"precision": "bf16"},
        "was compiled for cpu and cannot run on cuda:0": {"device": "cuda:0"},
        r"key 'inputs': .* has 2, the config declares 1": {"inputs": INPUTS[:1]},
        r"does not take a batch of 32 \(": {"max_batch_size": 32},
    }
    for match, keys in cases.items():
        with pytest.raises(ConfigError, match=match):
            TorchBackend(package, config(tmp_path, **keys), 1)
    from common.model_spec import Optimization

    graphs = dataclasses.replace(Optimization(), cuda_graphs=True)
    with pytest.raises(ConfigError, match="keeps the layout and kernels it was compiled with"):
        TorchBackend(package, config(tmp_path, optimization=graphs), 1)
