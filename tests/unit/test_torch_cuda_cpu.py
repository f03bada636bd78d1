"""PyTorch's CUDA runner on the CPU: CUDA's stream, event and graph calls replaced by stand-ins,
so its staging, lanes, memory-format choice, padding and slicing run here."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from common.model_config import load_model_config
from common.model_spec import Optimization
from runtime.backends.torch import TorchBackend
from runtime.backends.torch_cuda import CudaRunner
from tests.unit.gpu_helpers import (
    DIGITS,
    GRAPHS,
    IMAGE,
    SCORES,
    TinyNet,
    answers_like,
    config,
    scattered,
)


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
    answers_like(runner, reference, (5, 2, 5), 3, autocast)
    # Two lanes; one staging buffer per tensor in a lane, reused by every batch size.
    lanes = [runner.lanes.get() for _ in range(CudaRunner.DEPTH)]
    assert len({id(lane) for lane in lanes}) == 2 and runner.lanes.empty()
    # Runs take the lanes in turn: three batches used both.
    assert all(list(lane.staged_in.buffers) == list(lane.staged_out.buffers) == [0]
               for lane in lanes)
    for lane in lanes:
        runner.lanes.put(lane)
    # Two batches at once each take a lane of their own and get their own answers.
    rng = np.random.default_rng(4)
    batches = [rng.random((rows, 3, 16, 16), dtype=np.float32) for rows in (4, 7, 4, 7)]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda x: runner.run([x])[0], batches))
    for x, got in zip(batches, answers):
        with torch.inference_mode():
            want = reference(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=5e-2 if autocast else 1e-5)


def test_the_eager_path_gathers_spans_and_host_rows_in_place(no_streams: None) -> None:
    module, reference = tiny_net()
    cfg = config(inputs=IMAGE, outputs=SCORES, optimization=Optimization(channels_last=False))
    runner = CudaRunner(module, cfg, "cpu", None)
    x = np.random.default_rng(5).random((5, 3, 16, 16), dtype=np.float32)
    gather, memory = scattered(x, "FP32")
    got = runner.run([gather])[0]
    with torch.inference_mode():
        want = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The host rows went through page-locked staging of their own, bytes not floats.
    lanes = [runner.lanes.get() for _ in range(CudaRunner.DEPTH)]
    staged = [lane.staged_in.buffers[-1] for lane in lanes if -1 in lane.staged_in.buffers]
    assert len(staged) == 1 and staged[0].dtype == torch.uint8
    assert staged[0].numel() == x.nbytes
    del memory


@pytest.mark.parametrize(("fast", "chosen"), [(True, True), (False, False)])
def test_the_faster_memory_format_is_kept(no_streams: None, monkeypatch: pytest.MonkeyPatch,
                                         fast: bool, chosen: bool) -> None:
    monkeypatch.setattr(CudaRunner, "_time",
                        lambda self, fmt, sample: 3.0 if fmt == fast else 5.0)
    module, _ = tiny_net()
    runner = CudaRunner(module, config(inputs=IMAGE, outputs=SCORES), "cpu", None)
    assert runner.channels_last is chosen and runner.format_ms == {fast: 3.0, not fast: 5.0}
    weight = dict(module.named_parameters())["conv.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last) is chosen


class FakeGraph:
    """A captured graph as a record of the calls made while capturing, replayed in place into
    the same output tensors: the runner's graph bookkeeping (static buffers, padding, slicing)
    runs on the CPU."""

    capturing: FakeGraph | None = None

    def __init__(self) -> None:
        self.calls: list[tuple[Callable, list[torch.Tensor], tuple[torch.Tensor, ...]]] = []

    def pool(self) -> None:
        return None

    def replay(self) -> None:
        with torch.inference_mode():
            for call, args, outputs in self.calls:
                for out, fresh in zip(outputs, call(args)):
                    out.copy_(fresh)


def test_the_cuda_runners_graphs_pad_and_slice_on_the_cpu(
        no_streams: None, monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.contextmanager
    def capture(graph: FakeGraph, **kwargs: object) -> Iterator[None]:
        FakeGraph.capturing = graph
        try:
            yield
        finally:
            FakeGraph.capturing = None

    plain = CudaRunner._call

    def recording(self: CudaRunner, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        outputs = plain(self, args)
        if FakeGraph.capturing is not None:
            FakeGraph.capturing.calls.append((lambda a: plain(self, a), args, outputs))
        return outputs

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(CudaRunner, "_call", recording)
    module, reference = tiny_net()
    runner = CudaRunner(module, config(inputs=IMAGE, outputs=SCORES, optimization=GRAPHS),
                        "cpu", None)
    assert runner.sizes == (8, 64)
    lanes = [runner.lanes.get() for _ in range(CudaRunner.DEPTH)]
    assert all(sorted(lane.graphs) == [8, 64] for lane in lanes)
    assert lanes[0].graphs[8].inputs[0] is not lanes[1].graphs[8].inputs[0]
    for lane in lanes:
        runner.lanes.put(lane)
    rng = np.random.default_rng(8)
    for rows in (3, 8, 9, 2, 64):  # padded, exact, padded to 64, padded over stale rows, exact
        x = rng.random((rows, 3, 16, 16), dtype=np.float32)
        got = runner.run([x])[0]
        with torch.inference_mode():
            want = reference(torch.from_numpy(x)).numpy()
        assert got.shape == (rows, 4)
        np.testing.assert_allclose(got, want, atol=1e-5)
        # The same rows, every other one a span, land in the graph's input buffer alike.
        gather, memory = scattered(x, "FP32")
        np.testing.assert_allclose(runner.run([gather])[0], want, atol=1e-5)
        del memory

