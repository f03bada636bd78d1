"""PyTorch on a GPU: page-locked staging, host-to-device copies on their own stream, outputs
copied back asynchronously, CUDA graphs captured at load per batch size, channels_last.

Each instance keeps two batches in flight (the scheduler gives it a thread per lane), so one
batch's copies overlap the other's compute; the logic around CUDA's calls runs on the CPU too.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import queue
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from common.datatypes import NUMPY_DTYPES
from common.model_config import ModelConfig, TensorSpec
from runtime.backends.batch_sizes import capture_sizes, check_fixed_shapes, padded_size
from runtime.backends.torch_common import FLOATS, as_outputs, declared_type
from runtime.device_rows import DeviceSpan, Gather, host_ranges

log = logging.getLogger("tensorgate.runtime")


class PinnedStaging:
    """Host buffers, one per tensor, sized for the largest batch seen and viewed per batch
    size: page-locked (`pin`) so copies run asynchronously, and never allocated per batch."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.buffers: dict[int, torch.Tensor] = {}

    def take(self, key: int, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        count = int(np.prod(shape))
        found = self.buffers.get(key)
        if found is None or found.numel() < count or found.dtype != dtype:
            found = torch.empty(count, dtype=dtype, pin_memory=self.pin)
            self.buffers[key] = found
        return found[:count].view(tuple(shape))


def wants_channels_last(config: ModelConfig, module: torch.nn.Module) -> bool:
    """The config's choice, else on where an input (with its batch dimension) or a weight is
    4-D: cuDNN's NHWC convolutions are the fast ones on tensor cores."""
    if config.optimization.channels_last is not None:
        return config.optimization.channels_last
    batch = 1 if config.max_batch_size > 0 else 0
    if any(len(spec.shape) + batch == 4 for spec in config.inputs or ()):
        return True
    return any(p.dim() == 4 for p in module.parameters())


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: tuple[torch.Tensor, ...]


@dataclass
class Lane:
    """What one batch in flight owns: its streams, staging buffers and captured graphs (a
    graph replays fixed buffers, so two batches at once need two of each)."""

    copy_stream: torch.cuda.Stream
    compute_stream: torch.cuda.Stream
    staged_in: PinnedStaging
    staged_out: PinnedStaging
    graphs: dict[int, Captured] = field(default_factory=dict)


class CudaRunner:
    """One instance's GPU path. Up to DEPTH batches run at once, each in a lane of its own:
    while one batch computes, the next one's inputs are already copying."""

    DEPTH = 2

    def __init__(self, module: torch.nn.Module, config: ModelConfig, device: str,
                 autocast: torch.dtype | None) -> None:
        assert config.inputs is not None and config.outputs is not None
        self.module, self.device, self.autocast = module, torch.device(device), autocast
        self.inputs, self.outputs = config.inputs, config.outputs
        self.batched = config.max_batch_size > 0
        #: Milliseconds per full batch in each memory format, where measured at load.
        self.format_ms: dict[bool, float] = {}
        self.channels_last = self._memory_format(config)
        # A model without a batch dimension replays one graph of its fixed shapes ("size" 0).
        unbatched = config.optimization.cuda_graphs and not self.batched
        sizes = capture_sizes(config) or ((0,) if unbatched else ())
        if sizes:
            check_fixed_shapes(config, (*self.inputs, *self.outputs))
        self.sizes = sizes
        self.lanes: queue.SimpleQueue[Lane] = queue.SimpleQueue()
        for _ in range(self.DEPTH):
            self.lanes.put(self._lane(sizes))

    def _memory_format(self, config: ModelConfig) -> bool:
        """channels_last where the config says so; by default, where the model is 4-D, the
        format that runs a full batch faster here, both measured with cuDNN's autotuner."""
        if not wants_channels_last(config, self.module):
            return False
        # NOTE: process-wide; cuDNN tunes each new shape once, which the captured sizes (or
        # the warm-up's full batch) pay at load.
        torch.backends.cudnn.benchmark = True
        sample = self._sample(config)
        if config.optimization.channels_last is None and sample is not None:
            self.format_ms = {fmt: self._time(fmt, sample) for fmt in (False, True)}
            chosen = self.format_ms[True] <= self.format_ms[False]
        else:
            chosen = True
        self._set_format(chosen)
        log.info("model %s: %s memory format (ms per batch, NCHW / channels_last: %s)",
                 config.name, "channels_last" if chosen else "NCHW",
                 " / ".join(f"{self.format_ms[f]:.2f}" for f in (False, True))
                 if self.format_ms else "not measured")
        return chosen

    def _set_format(self, channels_last: bool) -> None:
        self.channels_last = channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        # NOTE: nn.Module.to takes memory_format (4-D parameters only); its stubs do not say so.
        self.module.to(memory_format=fmt)  # type: ignore[call-overload]

    def _sample(self, config: ModelConfig) -> list[torch.Tensor] | None:
        """A full batch of zeros on the device; None where a shape is not fixed."""
        if any(d < 0 for spec in self.inputs for d in spec.shape):
            return None
        rows = (config.max_batch_size,) if self.batched else ()
        return [torch.zeros((*rows, *spec.shape), dtype=_dtype(spec), device=self.device)
                for spec in self.inputs]

    def _time(self, channels_last: bool, sample: list[torch.Tensor]) -> float:
        """Milliseconds per batch in one format: the best of three, after two to warm up."""
        self._set_format(channels_last)
        best = float("inf")
        with self._context():
            for run in range(5):
                started = time.perf_counter()
                self._call(sample)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                if run >= 2:
                    best = min(best, (time.perf_counter() - started) * 1e3)
        return best

    def _lane(self, sizes: tuple[int, ...]) -> Lane:
        pin = self.device.type == "cuda"  # page-locking needs a GPU (tests run on the CPU)
        lane = Lane(torch.cuda.Stream(self.device), torch.cuda.Stream(self.device),
                    PinnedStaging(pin), PinnedStaging(pin))
        pool = None
        for size in sizes:
            lane.graphs[size] = self._capture(size, pool)
            pool = lane.graphs[size].graph.pool()
        return lane

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.autocast is None:
                yield
                return
            # NOTE: autocast's cache of cast weights would be freed under a captured graph that
            # reads it; uncached, the casts are part of the graph.
            with torch.autocast(self.device.type, dtype=self.autocast, cache_enabled=False):
                yield

    def _call(self, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self.channels_last:
            args = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a
                    for a in args]
        result = as_outputs(self.module(*args), self.outputs)
        return tuple(declared_type(r, spec) for r, spec in zip(result, self.outputs))

    def _capture(self, size: int, pool: Any) -> Captured:
        """A graph of one batch size, after warm-up runs on a side stream (cuDNN's tuning and
        lazy allocations must not be captured)."""
        rows = (size,) if self.batched else ()
        static = [torch.zeros((*rows, *spec.shape), dtype=_dtype(spec), device=self.device)
                  for spec in self.inputs]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), self._context():
            for _ in range(3):
                self._call(static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # NOTE: thread_local: other instances' threads keep running batches on their own
        # streams while a reloaded version captures.
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"), \
                self._context():
            outputs = self._call(static)
        return Captured(graph, static, outputs)

    def run(self, feeds: Sequence[np.ndarray | Gather]) -> list[np.ndarray]:
        """One batch in a free lane; waits for one when DEPTH batches are in flight. An input
        whose rows are partly in CUDA regions comes as a Gather, copied on the device."""
        lane = self.lanes.get()
        try:
            return self._run(lane, feeds)
        finally:
            self.lanes.put(lane)

    def _run(self, lane: Lane, feeds: Sequence[np.ndarray | Gather]) -> list[np.ndarray]:
        rows = feeds[0].shape[0] if self.batched else 0
        size = padded_size(rows, self.sizes) if self.sizes else None
        copied = torch.cuda.Event()
        with torch.cuda.stream(lane.copy_stream):
            if size is not None:
                args = lane.graphs[size].inputs
                for j, feed in enumerate(feeds):
                    self._fill(lane, j, feed, args[j][:rows] if self.batched else args[j])
            else:
                args = [self._upload(lane, j, feed) for j, feed in enumerate(feeds)]
            copied.record()
        with torch.cuda.stream(lane.compute_stream):
            lane.compute_stream.wait_event(copied)
            if size is not None:
                lane.graphs[size].graph.replay()
                outputs = lane.graphs[size].outputs
            else:
                with self._context():
                    outputs = self._call(args)
            return self._download(lane, outputs, rows if self.batched else None)

    def _fill(self, lane: Lane, j: int, feed: np.ndarray | Gather, target: torch.Tensor
              ) -> None:
        if isinstance(feed, Gather):
            self._gather(lane, j, feed, target)
        else:
            target.copy_(self._stage(lane, j, feed), non_blocking=True)

    def _upload(self, lane: Lane, j: int, feed: np.ndarray | Gather) -> torch.Tensor:
        if not isinstance(feed, Gather):
            return self._stage(lane, j, feed).to(self.device, non_blocking=True)
        target = torch.empty(feed.shape, dtype=_dtype(self.inputs[j]), device=self.device)
        self._gather(lane, j, feed, target)
        return target

    def _gather(self, lane: Lane, j: int, feed: Gather, target: torch.Tensor) -> None:
        """Each request's rows to its place in ``target``, on the copy stream: a span in a CUDA
        region device to device, a host part through the lane's page-locked staging."""
        flat = target.view(-1).view(torch.uint8)
        spans, hosts = feed.runs()
        for at, span in spans:
            if span.size:
                flat[at : at + span.size].copy_(device_view(span, self.device),
                                                non_blocking=True)
        if not hosts:
            return
        # NOTE: keys below 0: input j's own staging (its dtype, whole batches) stays as it is.
        staged = lane.staged_in.take(-1 - j, (feed.nbytes,), torch.uint8)
        feed.put_host(staged.numpy())
        for start, end in host_ranges(hosts):
            flat[start:end].copy_(staged[start:end], non_blocking=True)

    def _stage(self, lane: Lane, j: int, feed: np.ndarray) -> torch.Tensor:
        """The feed in page-locked memory: the one copy on the host, so the device copy is
        asynchronous (from pageable memory it would be a staged, synchronous one)."""
        host = lane.staged_in.take(j, feed.shape, _dtype(self.inputs[j]))
        host.copy_(torch.from_numpy(feed if feed.flags.writeable else feed.copy()))
        return host

    @staticmethod
    def _download(lane: Lane, outputs: Sequence[torch.Tensor], rows: int | None
                  ) -> list[np.ndarray]:
        """Outputs into page-locked memory on the compute stream, read once its event fired."""
        hosts = []
        for k, value in enumerate(outputs):
            value = value[:rows] if rows is not None else value
            host = lane.staged_out.take(k, value.shape, value.dtype)
            host.copy_(value, non_blocking=True)
            hosts.append(host)
        done = torch.cuda.Event()
        done.record()
        done.synchronize()
        # NOTE: copied out of the staging buffers, which the lane's next batch reuses.
        return [host.numpy().copy() for host in hosts]


class _CudaArray:
    """A span of a CUDA region as the CUDA array interface describes it: torch reads the
    memory where it is, without a copy."""

    def __init__(self, span: DeviceSpan) -> None:
        self.__cuda_array_interface__ = {"shape": (span.size,), "typestr": "|u1",
                                         "data": (span.pointer, False), "version": 3}


def device_view(span: DeviceSpan, device: torch.device) -> torch.Tensor:
    """The span's bytes as a tensor on ``device``, no copy. On the CPU (the runner's tests) a
    span is host memory."""
    if device.type == "cuda":
        return torch.as_tensor(_CudaArray(span), device=device)
    memory = (ctypes.c_uint8 * span.size).from_address(span.pointer)
    return torch.frombuffer(memory, dtype=torch.uint8)


def _dtype(spec: TensorSpec) -> torch.dtype:
    found = FLOATS.get(spec.datatype)
    if found is not None:
        return found
    return torch.from_numpy(np.empty(0, NUMPY_DTYPES[spec.datatype])).dtype
