"""Tensors that stay on a GPU: a span of a CUDA shared-memory region (an input's rows, or where an
output goes), and one input of a batch whose rows are partly such spans, which a backend running
on the GPU gathers there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.datatypes import NUMPY_DTYPES
from common.wire import Buffer

#: A copy between any two addresses CUDA knows: (target, source, size, device).
Copier = Callable[[int, int, int, int], None]


@dataclass(frozen=True, slots=True, eq=False)
class DeviceSpan:
    """Part of a CUDA region, mapped in this process: a request's input bytes, read by its
    batch's gather on the device and never copied to the host on their own, or the place one
    of its outputs is written to."""

    pointer: int
    size: int
    device: int
    #: The region's copy (cudaMemcpyDefault): for an output, or rows a backend must have on
    #: the host.
    copy: Copier

    def __len__(self) -> int:
        return self.size

    def into(self, target: np.ndarray) -> None:
        """The bytes into ``target`` (a host array of ``size`` bytes); waits for the GPU."""
        if self.size:
            self.copy(target.ctypes.data, self.pointer, self.size, self.device)

    def fill(self, data: Buffer) -> None:
        """``data`` (at most ``size`` bytes) to the span's start; waits for the GPU."""
        source = np.frombuffer(data, np.uint8)
        if source.nbytes:
            self.copy(self.pointer, source.ctypes.data, source.nbytes, self.device)


class Hold:
    """A request whose batch reads or writes CUDA regions, as the scheduler sees it: `running`
    from its batch's launch until that batch is done, and what to do then (`after`: the
    regions' release, for a caller that went first)."""

    __slots__ = ("after", "running")

    def __init__(self) -> None:
        self.running = False
        self.after: Callable[[], None] | None = None

    def finished(self) -> None:
        self.running = False
        after, self.after = self.after, None
        if after is not None:
            after()


#: One request's bytes of one input: on the host, or a span on a GPU.
Part = Buffer | DeviceSpan


@dataclass(frozen=True, slots=True, eq=False)
class Gather:
    """One input of a batch, its requests' parts in row order, for a backend that copies them
    into its own device buffer: spans device to device, host parts through its staging."""

    parts: tuple[Part, ...]
    shape: tuple[int, ...]
    datatype: str

    @property
    def nbytes(self) -> int:
        return sum(len(part) for part in self.parts)

    def host(self) -> np.ndarray:
        """The whole input on the host (spans copied one by one): for a backend that does not
        gather on the device."""
        whole = np.empty(self.nbytes, np.uint8)
        for at, span in self.put_host(whole):
            span.into(whole[at : at + span.size])
        return whole.view(NUMPY_DTYPES[self.datatype]).reshape(self.shape)

    def put_host(self, flat: np.ndarray) -> list[tuple[int, DeviceSpan]]:
        """The host parts copied to their places in ``flat`` (the batch's bytes); the spans,
        with theirs, left for the caller to copy."""
        spans, hosts = self.runs()
        for at, part in hosts:
            flat[at : at + len(part)] = np.frombuffer(part, np.uint8)
        return spans

    def runs(self) -> tuple[list[tuple[int, DeviceSpan]], list[tuple[int, Buffer]]]:
        """The spans and the host parts, each with its byte offset in the batch."""
        spans: list[tuple[int, DeviceSpan]] = []
        hosts: list[tuple[int, Buffer]] = []
        at = 0
        for part in self.parts:
            if isinstance(part, DeviceSpan):
                spans.append((at, part))
            else:
                hosts.append((at, part))
            at += len(part)
        return spans, hosts


def host_ranges(hosts: list[tuple[int, Buffer]]) -> list[tuple[int, int]]:
    """The byte ranges of a Gather's host parts (from `runs`), those that touch made one:
    neighbouring host rows go up in one copy."""
    merged: list[tuple[int, int]] = []
    for at, part in hosts:
        end = at + len(part)
        if merged and merged[-1][1] == at:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((at, end))
    return merged
