"""The GPU paths' logic on the CPU (captured sizes, padding, staging reuse, the bound buffers of
ONNX Runtime's graphs); the CUDA runs themselves where a GPU is visible."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from common.model_config import ConfigError, load_model_config
from common.model_spec import Optimization, TensorSpec
from runtime import cuda_api
from runtime.backends.batch_sizes import capture_sizes, check_fixed_shapes, padded_size
from runtime.backends.onnx import OnnxBackend
from runtime.backends.onnx_cuda import BoundRunner, gather, run_gathered
from runtime.backends.torch import TorchBackend
from runtime.backends.torch_cuda import PinnedStaging, wants_channels_last
from runtime.device_rows import DeviceSpan, Gather, Part
from tests.unit.gpu_helpers import (
    DIGITS,
    GRAPHS,
    IMAGE,
    ONNX,
    SCORES,
    TinyNet,
    config,
    host_copy,
    needs_cuda,
    scattered,
)


def test_graphs_are_captured_for_the_preferred_sizes_and_the_largest_batch() -> None:
    assert capture_sizes(config()) == ()
    assert capture_sizes(config(optimization=GRAPHS)) == (8, 64)
    assert capture_sizes(config(optimization=GRAPHS, dynamic_batching=None)) == (64,)
    assert capture_sizes(config(optimization=GRAPHS, max_batch_size=0)) == ()


@pytest.mark.parametrize(("rows", "size"), [(1, 8), (8, 8), (9, 64), (64, 64), (65, None)])
def test_a_batch_is_padded_up_to_the_next_captured_size(rows: int, size: int | None) -> None:
    assert padded_size(rows, (8, 64)) == size


def test_graphs_need_fixed_numeric_shapes_and_say_which_tensor() -> None:
    check_fixed_shapes(config(), IMAGE + SCORES)
    with pytest.raises(ConfigError, match=r"optimization.cuda.graphs.*'TOKENS' is INT64 of "
                                          r"shape \[-1\]"):
        check_fixed_shapes(config(), (TensorSpec("TOKENS", "INT64", (-1,)),))
    with pytest.raises(ConfigError, match="'TEXT' is BYTES"):
        check_fixed_shapes(config(), (TensorSpec("TEXT", "BYTES", (1,)),))


def test_staging_buffers_are_reused_across_batch_sizes_and_grow_once() -> None:
    staging = PinnedStaging(pin=False)  # page-locking needs a GPU; the reuse does not
    full = staging.take(0, (8, 3), torch.float32)
    small = staging.take(0, (2, 3), torch.float32)
    assert small.shape == (2, 3) and small.data_ptr() == full.data_ptr()
    other = staging.take(1, (2, 3), torch.float32)
    assert other.data_ptr() != full.data_ptr()
    grown = staging.take(0, (16, 3), torch.float32)
    assert grown.numel() == 48 and staging.take(0, (8, 3), torch.float32).data_ptr() == \
        grown.data_ptr()
    half = staging.take(0, (8, 3), torch.float16)
    assert half.dtype == torch.float16


def test_channels_last_follows_the_config_else_4d_inputs_or_weights() -> None:
    mlp = torch.nn.Linear(4, 4)
    conv = torch.nn.Conv2d(3, 4, 3)
    assert wants_channels_last(config(inputs=IMAGE), mlp)
    assert wants_channels_last(config(inputs=(TensorSpec("ROW", "FP32", (768,)),)), conv)
    assert not wants_channels_last(config(inputs=(TensorSpec("ROW", "FP32", (4,)),)), mlp)
    off = Optimization(channels_last=False)
    assert not wants_channels_last(config(inputs=IMAGE, optimization=off), conv)
    # Without batching, a 4-D input is 4-D as declared.
    assert not wants_channels_last(config(inputs=IMAGE, max_batch_size=0), mlp)


def test_bound_buffers_pad_a_batch_and_slice_the_answer_off() -> None:
    # The CUDA graph path's binding and padding, with buffers in host memory: ONNX Runtime's
    # CPU provider runs the same IOBinding calls (the graph ids mean nothing to it).
    digits = dataclasses.replace(load_model_config(DIGITS / "config.yaml", "digits"),
                                 device="cpu")
    plain = OnnxBackend(ONNX, digits, 1)
    bound = BoundRunner(plain.session, plain.inputs, plain.outputs, (8, 64), 0, "cpu")
    rng = np.random.default_rng(4)
    for rows in (3, 8, 9, 64, 2):
        x = rng.random((rows, 64), dtype=np.float32)
        got = bound.run([x])[0]
        assert got.shape == (rows, 10)
        np.testing.assert_allclose(got, plain.run([x])[0], rtol=1e-6)
        # Every other row a span: copied into the bound buffer after the host rows went up.
        gather, memory = scattered(x, "FP32")
        np.testing.assert_allclose(bound.run([gather])[0], got, rtol=1e-6)
        del memory
    with pytest.raises(ValueError, match="65 rows is larger than the largest captured size 64"):
        bound.run([np.zeros((65, 64), np.float32)])


def test_a_session_without_bound_buffers_gathers_into_a_buffer_per_batch() -> None:
    # The same IOBinding calls on the CPU provider, with 'device memory' in host memory.
    digits = dataclasses.replace(load_model_config(DIGITS / "config.yaml", "digits"),
                                 device="cpu")
    plain = OnnxBackend(ONNX, digits, 1)
    assert not plain.gathers_on_device  # on the CPU a span is copied to the host first
    x = np.random.default_rng(7).random((5, 64), dtype=np.float32)
    gather, memory = scattered(x, "FP32")
    got = run_gathered(plain.session, plain.inputs, ["OUTPUT0"], [gather], "cpu", 0)
    np.testing.assert_allclose(got[0], plain.run([x])[0], rtol=1e-6)
    del memory


def test_onnx_gather_writes_its_rows_alone_through_the_regions_copy() -> None:
    # ONNX Runtime's update_inplace copies from pageable memory on a stream of its own, which
    # may still be landing once the spans' copies are done; so the host rows go up through the
    # regions' copy as well (merged where they touch), and nothing but the batch's rows.
    rows = np.arange(24, dtype=np.float32).reshape(6, 4)
    copies: list[tuple[int, int]] = []

    def recording(target: int, source: int, size: int, device: int) -> None:
        copies.append((target, size))
        host_copy(target, source, size, device)

    parts: list[Part] = [row.tobytes() if i in (0, 1, 3) else
                         DeviceSpan(int(row.ctypes.data), row.nbytes, 0, recording)
                         for i, row in enumerate(rows)]
    padded = np.full((8, 4), -1.0, np.float32)  # a bound buffer of a captured size of 8
    gather(padded.ctypes.data, Gather(tuple(parts), rows.shape, "FP32"), 0)
    np.testing.assert_array_equal(padded[:6], rows)
    assert (padded[6:] == -1).all()
    base = padded.ctypes.data
    assert copies == [(base, 32), (base + 48, 16), (base + 32, 16), (base + 64, 16),
                      (base + 80, 16)]
    with pytest.raises(ValueError, match="without rows in CUDA regions"):
        gather(base, Gather((rows.tobytes(),), rows.shape, "FP32"), 0)


def saved_tiny_net(folder: Path) -> None:
    """TinyNet with seeded weights, as TorchScript in ``folder``/model.pt."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript's own
        torch.jit.script(TinyNet()).save(str(folder / "model.pt"))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_on_cuda_with_graphs_answers_as_the_cpu(tmp_path: Path, precision: str) -> None:
    needs_cuda()
    saved_tiny_net(tmp_path)
    on_cpu = config(inputs=IMAGE, outputs=SCORES, device="cpu")
    on_gpu = config(inputs=IMAGE, outputs=SCORES, device="cuda:0", optimization=GRAPHS,
                    precision=precision)
    cpu = TorchBackend(tmp_path / "model.pt", on_cpu, 1)
    gpu = TorchBackend(tmp_path / "model.pt", on_gpu, 1)
    assert gpu.cuda is not None and gpu.cuda.sizes == (8, 64)
    rng = np.random.default_rng(1)
    for rows in (3, 8, 9, 64):  # padded to 8, exact, padded to 64, exact
        x = rng.random((rows, 3, 16, 16), dtype=np.float32)
        got, want = gpu.run([x])[0], cpu.run([x])[0]
        assert got.dtype == np.float32 and got.shape == (rows, 4)
        np.testing.assert_allclose(got, want, atol=1e-2 if precision == "fp16" else 1e-4)


@pytest.mark.parametrize("graphs", [True, False])
def test_torch_on_cuda_gathers_rows_from_device_memory(tmp_path: Path, graphs: bool) -> None:
    needs_cuda()
    saved_tiny_net(tmp_path)
    cpu = TorchBackend(tmp_path / "model.pt", config(inputs=IMAGE, outputs=SCORES,
                                                     device="cpu"), 1)
    gpu = TorchBackend(tmp_path / "model.pt", config(
        inputs=IMAGE, outputs=SCORES, device="cuda:0",
        optimization=GRAPHS if graphs else Optimization()), 1)
    assert gpu.gathers_on_device

    def unused(target: int, source: int, size: int, device: int) -> None:
        raise AssertionError("a span is read on the device, never copied to the host")

    x = np.random.default_rng(6).random((5, 3, 16, 16), dtype=np.float32)
    # Rows 1 and 3 in device memory, as a client's cudaIpc buffer would be; the rest bytes.
    memory = torch.from_numpy(x.reshape(5, -1)).to("cuda:0")
    # NOTE: as a client's copy into its region has finished before it sends the request; the
    # gather reads on streams of its own, which wait for no other work.
    torch.cuda.synchronize()
    parts: list[Part] = [
        DeviceSpan(memory[i].data_ptr(), x[i].nbytes, 0, unused) if i % 2 else x[i].tobytes()
        for i in range(5)]
    got = gpu.run([Gather(tuple(parts), x.shape, "FP32")])[0]  # type: ignore[list-item]
    np.testing.assert_allclose(got, cpu.run([x])[0], atol=1e-4)


def test_torch_on_cuda_replays_one_graph_for_a_model_without_batching(tmp_path: Path) -> None:
    needs_cuda()
    saved_tiny_net(tmp_path)
    fixed = dict(inputs=(TensorSpec("IMAGE", "FP32", (2, 3, 16, 16)),),
                 outputs=(TensorSpec("SCORES", "FP32", (2, 4)),), max_batch_size=0,
                 dynamic_batching=None)
    cpu = TorchBackend(tmp_path / "model.pt", config(device="cpu", **fixed), 1)
    gpu = TorchBackend(tmp_path / "model.pt", config(device="cuda:0", optimization=GRAPHS,
                                                     **fixed), 1)
    assert gpu.cuda is not None and gpu.cuda.sizes == (0,)
    x = np.random.default_rng(5).random((2, 3, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(gpu.run([x])[0], cpu.run([x])[0], atol=1e-4)


def needs_onnx_cuda() -> None:
    if "CUDAExecutionProvider" not in ort.InferenceSession(
            str(ONNX), providers=["CUDAExecutionProvider"]).get_providers():
        pytest.skip("needs a CUDA GPU and ONNX Runtime's CUDA provider: none loads here")


@pytest.mark.parametrize("graphs", [True, False])
def test_onnx_on_cuda_gathers_rows_from_device_memory(graphs: bool) -> None:
    needs_onnx_cuda()
    digits = load_model_config(DIGITS / "config.yaml", "digits")
    cpu = OnnxBackend(ONNX, dataclasses.replace(digits, device="cpu"), 1)
    gpu = OnnxBackend(ONNX, dataclasses.replace(
        digits, device="cuda:0", optimization=GRAPHS if graphs else Optimization()), 1)
    assert gpu.gathers_on_device and (gpu.bound is not None) == graphs
    cuda = cuda_api.load()
    assert cuda is not None, cuda_api.NO_LIBRARY
    x = np.random.default_rng(8).random((5, 64), dtype=np.float32)
    # Rows 1 and 3 in device memory, as a client's cudaIpc buffer would be; the rest bytes.
    memory = torch.from_numpy(x).to("cuda:0")
    # NOTE: as a client's copy into its region has finished before it sends the request; the
    # gather reads on streams of its own, which wait for no other work.
    torch.cuda.synchronize()
    parts: list[Part] = [
        DeviceSpan(memory[i].data_ptr(), x[i].nbytes, 0, cuda.copy) if i % 2 else x[i].tobytes()
        for i in range(5)]
    got = gpu.run([Gather(tuple(parts), x.shape, "FP32")])[0]  # type: ignore[list-item]
    np.testing.assert_allclose(got, cpu.run([x])[0], atol=1e-4)


def test_onnx_on_cuda_with_graphs_answers_as_the_cpu() -> None:
    needs_onnx_cuda()
    digits = load_model_config(DIGITS / "config.yaml", "digits")
    cpu = OnnxBackend(ONNX, dataclasses.replace(digits, device="cpu"), 1)
    gpu = OnnxBackend(ONNX, dataclasses.replace(digits, device="cuda:0", optimization=GRAPHS), 1)
    assert gpu.bound is not None
    rng = np.random.default_rng(2)
    for rows in (5, 32, 33, 64, 5):
        x = rng.random((rows, 64), dtype=np.float32)
        np.testing.assert_allclose(gpu.run([x])[0], cpu.run([x])[0], atol=1e-4)
