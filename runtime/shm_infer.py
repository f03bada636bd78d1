"""One inference whose tensors live in shared-memory regions: its inputs resolved to views of the
mappings (no copy before the batch gather), its outputs written into the regions it names."""

from __future__ import annotations

from typing import Any

from common.errors import invalid_argument
from common.wire import Buffer
from runtime.decode import InferCall
from runtime.shm import Region, Regions, span


class Lease:
    """The regions one request uses, held until `release`; `call` reads inputs in place."""

    def __init__(self, regions: Regions, call: InferCall) -> None:
        self.regions = regions
        self.held: list[Region] = []
        #: output name → (region, start in its view, byte_size)
        self.outputs: dict[str, tuple[Region, int, int]] = {}
        try:
            self.call = self._inputs(call)
            self._outputs(call.message)
        except BaseException:
            self.release()
            raise

    def _take(self, found: tuple[str, int, int], what: str) -> tuple[Region, int, int]:
        name, offset, size = found
        region, start = self.regions.lease(name, offset, size, what)
        self.held.append(region)
        return region, start, size

    def _inputs(self, call: InferCall) -> InferCall:
        """raw_input_contents belong, in order, to the inputs not in a region (as Triton has
        it); the call's raw holds one entry per input, None for one given as contents."""
        message, raw = call.message, call.raw
        resolved: list[Buffer | None] = []
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
            resolved.append(region.view[start : start + size])
        if raw and taken != len(raw):
            raise invalid_argument(f"{len(raw)} raw_input_contents for {taken} inputs not in "
                                   "shared memory")
        return InferCall(message, resolved)  # type: ignore[arg-type]

    def _outputs(self, message: Any) -> None:
        for output in message.outputs:
            what = f"output '{output.name}'"
            found = span(output.parameters, what)
            if found is not None:
                self.outputs[output.name] = self._take(found, what)

    def write(self, response: Any) -> None:
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
        for out, data, into in zip(response.outputs, raws, placed):
            if into:
                region, start, _ = self.outputs[out.name]
                region.view[start : start + len(data)] = data
        # NOTE: an empty entry, not none: clients find an output's bytes by its index.
        kept = [b"" if into else data for data, into in zip(raws, placed)]
        del response.raw_output_contents[:]
        response.raw_output_contents.extend(kept)

    def release(self) -> None:
        for region in self.held:
            self.regions.release(region)
        self.held.clear()
