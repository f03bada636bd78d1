"""A torch.export program on the PyTorch GPU path: the CUDA runner's staging, lanes,
channels_last and autocast on the CPU (CUDA's calls replaced, as in test_torch_cuda_cpu), and
on a real GPU (skipped where none is visible) the program with CUDA graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.model_config import ConfigError
from common.model_spec import Optimization
from runtime.backends.torch import TorchBackend
from runtime.backends.torch_cuda import CudaRunner
from runtime.backends.torch_export import load_pt2
from runtime.backends.torch_formats import EXPORTED
from tests.unit.gpu_helpers import GRAPHS, TinyNet, answers_like, config, needs_cuda
from tests.unit.test_torch_cuda_cpu import no_streams  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyNet]:
    torch.manual_seed(0)
    reference = TinyNet().eval()
    batch = torch.export.Dim("batch", max=64)
    with torch.no_grad():
        program = torch.export.export(reference, (torch.zeros(2, 3, 16, 16),),
                                      dynamic_shapes={"image": {0: batch}})
    path = tmp_path_factory.mktemp("tiny") / "model.pt2"
    torch.export.save(program, str(path))
    return path, reference


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_cuda_runner_runs_a_program_in_channels_last(
        no_streams: None, tiny: tuple[Path, TinyNet], precision: str) -> None:  # noqa: F811
    path, reference = tiny
    cfg = config(device="cpu", precision=precision,
                 optimization=Optimization(channels_last=True))
    loaded = load_pt2(path, EXPORTED, cfg, "cpu")
    assert [s.name for s in loaded.config.inputs or ()] == ["image"]
    autocast = torch.bfloat16 if precision == "bf16" else None
    runner = CudaRunner(loaded.module, loaded.config, "cpu", autocast)
    weight = dict(loaded.module.named_parameters())["program.conv.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last)
    answers_like(runner, reference, (1, 6, 64), 5, autocast)


def test_a_program_on_a_gpu_with_cuda_graphs(tiny: tuple[Path, TinyNet]) -> None:
    needs_cuda()
    path, reference = tiny
    backend = TorchBackend(path, config(device="cuda:0", optimization=GRAPHS), 1)
    assert backend.cuda is not None and backend.cuda.sizes == (8, 64)
    x = np.random.default_rng(6).random((5, 3, 16, 16), dtype=np.float32)
    with torch.inference_mode():
        want = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(backend.run([x])[0], want, atol=1e-3)


def test_a_program_asked_for_more_rows_than_exported_is_refused(
        tiny: tuple[Path, TinyNet]) -> None:
    path, _ = tiny
    with pytest.raises(ConfigError, match="takes batches of 1 to 64, not every size from 1 to 128"):
        TorchBackend(path, config(device="cpu", max_batch_size=128), 1)
