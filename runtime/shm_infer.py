"""One inference whose tensors live in shared-memory regions: its inputs resolved to views of the
mappings or spans of CUDA regions (no copy before the batch gather), its outputs written into the
regions it names."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np

from common.errors import TensorgateError, invalid_argument
from runtime.classify import PARAMETER as CLASSES
from runtime.cuda_api import CudaError
from runtime.cuda_shm import CudaRegion
from runtime.decode import InferCall
from runtime.device_rows import DeviceSpan, Part
from runtime.shm import Region, Regions, span

#: A copy between the host and a CUDA region: (target, source, size, device, what it is for).
Copy = tuple[int, int, int, int, str]


class Lease:
    """The regions one request uses, held until `release`; `call` reads inputs in place (those
    in CUDA regions once `fetch` has made them spans or copied them to the host) and names the
    CUDA regions its outputs go to (`places`)."""

    def __init__(self, regions: Regions, call: InferCall) -> None:
        self.regions = regions
        self.held: list[Region | CudaRegion] = []
        #: output name → (region, start in its view, byte_size)
        self.outputs: dict[str, tuple[Region | CudaRegion, int, int]] = {}
        #: Inputs in CUDA regions, read by `fetch`: (index in the call's raw, region, span,
        #: what it is, whether it is text).
        self.device_inputs: list[tuple[int, CudaRegion, int, int, str, bool]] = []
        try:
            self.call = self._inputs(call)
            places = self._outputs(call.message)
        except BaseException:
            self.release()
            raise
        if places:
            self.call.places, self.call.device = places, True

    def _take(self, found: tuple[str, int, int], what: str
              ) -> tuple[Region | CudaRegion, int, int]:
        name, offset, size = found
        held: Region | CudaRegion
        if name in self.regions.cuda.table:
            held, start = self.regions.cuda.lease(name, offset, size, what), offset
        else:
            held, start = self.regions.lease(name, offset, size, what)
        self.held.append(held)
        return held, start, size

    def _inputs(self, call: InferCall) -> InferCall:
        """raw_input_contents belong, in order, to the inputs not in a region (as Triton has
        it); the call's raw holds one entry per input, None for one given as contents."""
        message, raw = call.message, call.raw
        resolved: list[Part | None] = []
        taken = 0
        for tensor in message.inputs:
            what = f"input '{tensor.name}'"
            found = span(tensor.parameters, what)
            if found is None:
                if raw and taken >= len(raw):
                    raise invalid_argument(f"{what}: not in shared memory, and no "
                                           "raw_input_contents left for it")
                resolved.append(raw[taken] if raw else None)
                taken += bool(raw)
                continue
            if tensor.HasField("contents"):
                raise invalid_argument(f"{what}: contents must not be set when its data is in "
                                       "shared memory")
            region, start, size = self._take(found, what)
            if isinstance(region, CudaRegion):
                self.device_inputs.append((len(resolved), region, start, size, what,
                                           tensor.datatype == "BYTES"))
                resolved.append(None)  # NOTE: `fetch` fills it in
            else:
                resolved.append(region.view[start : start + size])
        if raw and taken != len(raw):
            raise invalid_argument(f"{len(raw)} raw_input_contents for {taken} inputs not in "
                                   "shared memory")
        return InferCall(message, resolved)  # type: ignore[arg-type]

    def _outputs(self, message: Any) -> dict[str, DeviceSpan]:
        """Each output's region; those in CUDA regions (not asked as classes, which are made
        from the output later) also as spans, for the executor to write there itself."""
        places: dict[str, DeviceSpan] = {}
        for output in message.outputs:
            what = f"output '{output.name}'"
            found = span(output.parameters, what)
            if found is None:
                continue
            region, start, size = self.outputs[output.name] = self._take(found, what)
            if isinstance(region, CudaRegion) and CLASSES not in output.parameters:
                places[output.name] = DeviceSpan(region.pointer + start, size,
                                                 region.device_id, region.api.copy)
        return places

    async def fetch(self, on_device: bool) -> None:
        """Inputs in CUDA regions: left there as spans `on_device` (the model's backend gathers
        its batches on the GPU; text is read on the host), else copied to the host, once each,
        in a thread (a copy waits for the GPU)."""
        if not self.device_inputs:
            return
        raw: list[Part | None] = self.call.raw  # type: ignore[assignment]
        copies: list[Copy] = []
        for index, region, start, size, what, text in self.device_inputs:
            if on_device and not text:
                raw[index] = DeviceSpan(region.pointer + start, size, region.device_id,
                                        region.api.copy)
                self.call.device = True
                continue
            host = np.empty(size, np.uint8)
            raw[index] = host.data
            copies.append((host.ctypes.data, region.pointer + start, size, region.device_id,
                           f"{what}: reading {region.shown()}"))
        if copies:
            await _copy(self.device_inputs[0][1], copies)

    async def write(self, response: Any) -> None:
        """Each output that names a region is written there, and answered without its bytes
        (an empty raw_output_contents entry, as Triton answers)."""
        if not self.outputs:
            return
        raws = list(response.raw_output_contents)
        placed: list[bool] = []
        for out, data in zip(response.outputs, raws):
            target = self.outputs.get(out.name)
            placed.append(target is not None)
            if target is not None and len(data) > target[2]:
                raise invalid_argument(f"output '{out.name}' takes {len(data)} bytes; "
                                       f"{target[0].shown()} gives it {target[2]} "
                                       "(shared_memory_byte_size)")
        copies: list[Copy] = []
        device: CudaRegion | None = None
        for out, data, into in zip(response.outputs, raws, placed):
            if not into:
                continue
            region, start, _ = self.outputs[out.name]
            if isinstance(region, CudaRegion):
                if not len(data):  # NOTE: written there by the executor (or empty)
                    continue
                source = np.frombuffer(data, np.uint8)
                copies.append((region.pointer + start, source.ctypes.data, len(data),
                               region.device_id, f"output '{out.name}': writing "
                               f"{region.shown()}"))
                device = region
            else:
                region.view[start : start + len(data)] = data
        if device is not None:
            await _copy(device, copies)
        # NOTE: an empty entry, not none: clients find an output's bytes by its index.
        kept = [b"" if into else data for data, into in zip(raws, placed)]
        del response.raw_output_contents[:]
        response.raw_output_contents.extend(kept)

    def release(self) -> None:
        for region in self.held:
            if isinstance(region, CudaRegion):
                self.regions.cuda.release(region)
            else:
                self.regions.release(region)
        self.held.clear()


async def _copy(region: CudaRegion, copies: list[Copy]) -> None:
    """The copies, in a thread: each waits for the GPU, which the event loop must not."""
    api = region.api

    def run() -> None:
        for target, source, size, device, what in copies:
            if size:
                try:
                    api.copy(target, source, size, device)
                except CudaError as exc:
                    raise TensorgateError(grpc.StatusCode.INTERNAL,
                                          f"{what} failed: {exc}") from None

    await asyncio.to_thread(run)
