"""The GPU paths' logic on the CPU (captured sizes, padding, staging reuse, channels_last, the
TensorRT provider and its options); the CUDA runs themselves where a GPU is visible."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from common.model_config import ConfigError, load_model_config
from common.model_spec import Accelerator, DynamicBatching, ModelConfig, Optimization, TensorSpec
from runtime.backends import onnx_options
from runtime.backends.batch_sizes import capture_sizes, check_fixed_shapes, padded_size
from runtime.backends.onnx import OnnxBackend
from runtime.backends.onnx_cuda import BoundRunner
from runtime.backends.torch import TorchBackend
from runtime.backends.torch_cuda import PinnedStaging, wants_channels_last

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"
ONNX = DIGITS / "1" / "model.onnx"
GRAPHS = Optimization(cuda_graphs=True)
TRT = Optimization((Accelerator("tensorrt", (("precision_mode", "FP16"),)),))
IMAGE = (TensorSpec("IMAGE", "FP32", (3, 16, 16)),)
SCORES = (TensorSpec("SCORES", "FP32", (4,)),)


def config(**changes: object) -> ModelConfig:
    base = ModelConfig("m", Path("/repo/m/config.yaml"), max_batch_size=64,
                       dynamic_batching=DynamicBatching(preferred_batch_size=(8, 64, 128)))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


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


def test_a_torchscript_model_asking_for_tensorrt_is_refused() -> None:
    digits = dataclasses.replace(load_model_config(DIGITS / "config.yaml", "digits"),
                                 device="cpu", optimization=TRT)
    with pytest.raises(ConfigError, match="TensorRT runs ONNX models only"):
        TorchBackend(DIGITS / "2" / "model.pt", digits, 1)


def test_cuda_keys_on_the_cpu_are_each_named_once(caplog: pytest.LogCaptureFixture) -> None:
    digits = dataclasses.replace(
        load_model_config(DIGITS / "config.yaml", "digits"), device="cpu",
        optimization=Optimization(cuda_graphs=True, channels_last=True))
    with caplog.at_level(logging.WARNING, logger="tensorgate.runtime"):
        backend = TorchBackend(DIGITS / "2" / "model.pt", digits, 1)
        TorchBackend(DIGITS / "2" / "model.pt", digits, 1, quiet=True)
    assert backend.cuda is None
    assert [r.getMessage().split(" is set")[0] for r in caplog.records] == [
        "model digits: optimization.cuda.graphs", "model digits: optimization.cuda.channels_last"]
    assert all("device cpu" in r.getMessage() for r in caplog.records)
    assert backend.run([np.zeros((2, 64), np.float32)])[0].shape == (2, 10)


# ---- CUDA only -------------------------------------------------------------------------------

class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(image)).mean(dim=(2, 3)))


def needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: none is visible")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_on_cuda_with_graphs_answers_as_the_cpu(tmp_path: Path, precision: str) -> None:
    needs_cuda()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.script(TinyNet()).save(str(tmp_path / "model.pt"))
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


def test_torch_on_cuda_replays_one_graph_for_a_model_without_batching(tmp_path: Path) -> None:
    needs_cuda()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.script(TinyNet()).save(str(tmp_path / "model.pt"))
    fixed = dict(inputs=(TensorSpec("IMAGE", "FP32", (2, 3, 16, 16)),),
                 outputs=(TensorSpec("SCORES", "FP32", (2, 4)),), max_batch_size=0,
                 dynamic_batching=None)
    cpu = TorchBackend(tmp_path / "model.pt", config(device="cpu", **fixed), 1)
    gpu = TorchBackend(tmp_path / "model.pt", config(device="cuda:0", optimization=GRAPHS,
                                                     **fixed), 1)
    assert gpu.cuda is not None and gpu.cuda.sizes == (0,)
    x = np.random.default_rng(5).random((2, 3, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(gpu.run([x])[0], cpu.run([x])[0], atol=1e-4)


def test_onnx_on_cuda_with_graphs_answers_as_the_cpu() -> None:
    if "CUDAExecutionProvider" not in ort.InferenceSession(
            str(ONNX), providers=["CUDAExecutionProvider"]).get_providers():
        pytest.skip("needs a CUDA GPU and ONNX Runtime's CUDA provider: none loads here")
    digits = load_model_config(DIGITS / "config.yaml", "digits")
    cpu = OnnxBackend(ONNX, dataclasses.replace(digits, device="cpu"), 1)
    gpu = OnnxBackend(ONNX, dataclasses.replace(digits, device="cuda:0", optimization=GRAPHS), 1)
    assert gpu.bound is not None
    rng = np.random.default_rng(2)
    for rows in (5, 32, 33, 64, 5):
        x = rng.random((rows, 64), dtype=np.float32)
        np.testing.assert_allclose(gpu.run([x])[0], cpu.run([x])[0], atol=1e-4)


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
    with pytest.raises(ValueError, match="65 rows is larger than the largest captured size 64"):
        bound.run([np.zeros((65, 64), np.float32)])


class FakeStream:
    """CUDA's stream and event calls as no-ops: the runner's CPU-side logic runs in order."""

    def __init__(self, *args: object) -> None:
        pass

    def wait_event(self, event: object) -> None:
        pass

    def wait_stream(self, stream: object) -> None:
        pass

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


@pytest.fixture()
def no_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    for name in ("Stream", "Event", "current_stream"):
        monkeypatch.setattr(torch.cuda, name, FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())


def tiny_net() -> tuple[torch.jit.ScriptModule, TinyNet]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript's own
        module = torch.jit.script(TinyNet())
    reference = TinyNet()
    reference.load_state_dict(module.state_dict())
    return module, reference


@pytest.mark.parametrize(("precision", "channels_last"), [("fp32", None), ("bf16", True)])
def test_the_cuda_runners_eager_path_stages_runs_and_casts_back(
        no_streams: None, precision: str, channels_last: bool | None) -> None:
    from runtime.backends.torch_cuda import CudaRunner

    module, reference = tiny_net()
    cfg = config(inputs=IMAGE, outputs=SCORES, precision=precision,
                 optimization=Optimization(channels_last=channels_last))
    autocast = torch.bfloat16 if precision == "bf16" else None
    runner = CudaRunner(module, cfg, "cpu", autocast)
    assert runner.sizes == ()
    if channels_last is None:  # measured: the faster format here won
        assert sorted(runner.format_ms) == [False, True]
        assert all(ms > 0 for ms in runner.format_ms.values())
        assert runner.channels_last == (runner.format_ms[True] <= runner.format_ms[False])
    else:
        assert runner.channels_last and runner.format_ms == {}
    weight = dict(module.named_parameters())["conv.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last) == runner.channels_last
    rng = np.random.default_rng(3)
    for rows in (5, 2, 5):
        x = rng.random((rows, 3, 16, 16), dtype=np.float32)
        got = runner.run([x])[0]
        with torch.inference_mode():
            want = reference(torch.from_numpy(x)).numpy()
        assert got.dtype == np.float32 and got.shape == (rows, 4)
        np.testing.assert_allclose(got, want, atol=5e-2 if autocast else 1e-5)
    # Two lanes; one staging buffer per tensor in a lane, reused by every batch size.
    lanes = [runner.lanes.get() for _ in range(CudaRunner.DEPTH)]
    assert len({id(lane) for lane in lanes}) == 2 and runner.lanes.empty()
    # Runs take the lanes in turn: three batches used both.
    assert all(list(lane.staged_in.buffers) == list(lane.staged_out.buffers) == [0]
               for lane in lanes)
    for lane in lanes:
        runner.lanes.put(lane)
    # Two batches at once each take a lane of their own and get their own answers.
    batches = [rng.random((rows, 3, 16, 16), dtype=np.float32) for rows in (4, 7, 4, 7)]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda x: runner.run([x])[0], batches))
    for x, got in zip(batches, answers):
        with torch.inference_mode():
            want = reference(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=5e-2 if autocast else 1e-5)


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


@pytest.mark.parametrize(("fast", "chosen"), [(True, True), (False, False)])
def test_the_faster_memory_format_is_kept(no_streams: None, monkeypatch: pytest.MonkeyPatch,
                                         fast: bool, chosen: bool) -> None:
    from runtime.backends.torch_cuda import CudaRunner

    monkeypatch.setattr(CudaRunner, "_time",
                        lambda self, fmt, sample: 3.0 if fmt == fast else 5.0)
    module, _ = tiny_net()
    runner = CudaRunner(module, config(inputs=IMAGE, outputs=SCORES), "cpu", None)
    assert runner.channels_last is chosen and runner.format_ms == {fast: 3.0, not fast: 5.0}
    weight = dict(module.named_parameters())["conv.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last) is chosen
