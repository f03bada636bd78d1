"""ONNX Runtime with CUDA graphs: inputs and outputs in device buffers bound once per batch
size (IOBinding), each size its own graph (`gpu_graph_id`), a batch padded up to the next size.

ONNX Runtime captures a graph on a size's first runs and replays it after; a replay reads and
writes the same device addresses, which is why the buffers are bound once and updated in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from common.datatypes import NUMPY_DTYPES
from common.model_config import TensorSpec
from runtime.backends.batch_sizes import padded_size
from runtime.device_rows import Gather, host_ranges


@dataclass
class Bound:
    binding: ort.IOBinding
    inputs: list[ort.OrtValue]
    outputs: list[ort.OrtValue]
    options: ort.RunOptions
    #: Host rows a short batch is padded in, kept per size.
    padding: list[np.ndarray]


class BoundRunner:
    def __init__(self, session: ort.InferenceSession, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], sizes: Sequence[int], device_id: int,
                 device_type: str = "cuda") -> None:
        self.session = session
        self.sizes = tuple(sizes)
        self.device_type, self.device_id = device_type, device_id
        self.bound = {size: self._bind(inputs, outputs, size, graph_id)
                      for graph_id, size in enumerate(self.sizes or (0,))}
        self._warm()

    def _warm(self) -> None:
        """ONNX Runtime captures a size's graph after its first plain runs: at load, not on
        the first requests of that size."""
        for bound in self.bound.values():
            for _ in range(3):
                self.session.run_with_iobinding(bound.binding, bound.options)

    def _bind(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], size: int,
              graph_id: int) -> Bound:
        """Device buffers for one batch size (0: the model takes no batch dimension)."""
        binding = self.session.io_binding()
        ins = [self._buffer(spec, size) for spec in inputs]
        outs = [self._buffer(spec, size) for spec in outputs]
        for spec, value in zip(inputs, ins):
            binding.bind_ortvalue_input(spec.name, value)
        for spec, value in zip(outputs, outs):
            binding.bind_ortvalue_output(spec.name, value)
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
        padding = [np.zeros(self._shape(spec, size), NUMPY_DTYPES[spec.datatype])
                   for spec in inputs]
        return Bound(binding, ins, outs, options, padding)

    def _buffer(self, spec: TensorSpec, size: int) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_shape_and_type(
            self._shape(spec, size), NUMPY_DTYPES[spec.datatype], self.device_type,
            self.device_id)

    @staticmethod
    def _shape(spec: TensorSpec, size: int) -> tuple[int, ...]:
        return (size, *spec.shape) if size else spec.shape

    def run(self, feeds: Sequence[np.ndarray | Gather]) -> list[np.ndarray]:
        """One batch; an input whose rows are partly in CUDA regions comes as a Gather, whose
        rows are copied to their places in the bound buffer (`gather`)."""
        rows = feeds[0].shape[0] if self.sizes else 0
        size = padded_size(rows, self.sizes) if self.sizes else 0
        if size is None:
            raise ValueError(f"a batch of {rows} rows is larger than the largest captured "
                             f"size {self.sizes[-1]}")
        bound = self.bound[size]
        for value, feed, pad in zip(bound.inputs, feeds, bound.padding):
            if isinstance(feed, Gather):
                gather(value.data_ptr(), feed, self.device_id)
                continue
            if rows != size:
                # NOTE: the rows past the batch keep an earlier batch's values: finite, and
                # their outputs are sliced off.
                pad[:rows] = feed
                feed = pad
            value.update_inplace(np.ascontiguousarray(feed))
        self.session.run_with_iobinding(bound.binding, bound.options)
        return [out[:rows] if size else out for out in bound.binding.copy_outputs_to_cpu()]


def gather(pointer: int, feed: Gather, device: int) -> None:
    """A Gather's rows to their places in the device buffer at ``pointer`` (on ``device``):
    its host rows up range by range, then its spans device to device, each copy waited for.
    Nothing else there is written, so a padded batch's last rows keep earlier values.

    NOTE: all through the regions' own copy (a stream of its own, synchronised), not
    OrtValue.update_inplace: that copy from pageable memory may still be landing when the
    spans' copies on another stream are done, and it would write over them."""
    spans, hosts = feed.runs()
    if not spans:  # NOTE: the executor makes a Gather only of an input with a span
        raise ValueError("a Gather without rows in CUDA regions")
    copy = spans[0][1].copy
    if hosts:
        staged = np.empty(feed.nbytes, np.uint8)
        feed.put_host(staged)
        for start, end in host_ranges(hosts):
            copy(pointer + start, staged.ctypes.data + start, end - start, device)
    for at, span in spans:
        span.copy(pointer + at, span.pointer, span.size, span.device)


def run_gathered(session: ort.InferenceSession, inputs: Sequence[TensorSpec],
                 output_names: Sequence[str], feeds: Sequence[np.ndarray | Gather],
                 device_type: str, device_id: int) -> list[np.ndarray]:
    """One batch with rows in CUDA regions on a session without bound buffers: each Gather
    into a device buffer of its own (`gather`), every other input bound from the host; the
    outputs come back to the host."""
    binding = session.io_binding()
    held = []  # NOTE: a binding does not keep its OrtValues alive
    for spec, feed in zip(inputs, feeds):
        if not isinstance(feed, Gather):
            binding.bind_cpu_input(spec.name, np.ascontiguousarray(feed))
            continue
        value = ort.OrtValue.ortvalue_from_shape_and_type(
            feed.shape, NUMPY_DTYPES[feed.datatype], device_type, device_id)
        gather(value.data_ptr(), feed, device_id)
        binding.bind_ortvalue_input(spec.name, value)
        held.append(value)
    for name in output_names:
        binding.bind_output(name)
    session.run_with_iobinding(binding)
    return list(binding.copy_outputs_to_cpu())
