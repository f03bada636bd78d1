"""HTTP infer bodies to lane requests, each distinct JSON header parsed once: a client sends the
same header with every request (model, names, shapes, sizes; only the tensors' bytes differ), so
what the codec made of it is kept by its exact bytes and the next body only cuts its tensors."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import invalid_argument
from common.proto import grpc_service_pb2 as pb
from common.wire import Buffer
from gateway.http_codec import OutputPrefs, decode_infer_parts
from gateway.request_parts import Request, from_head

#: Headers kept, and the longest kept: far above what a client sends for a few binary tensors;
#: a header with the tensors' data inline (JSON) differs with every request and is never kept.
ENTRIES = 256
MAX_HEADER_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Decoded:
    """A body as the pipeline takes it: the request, its id and deadline, the output
    preferences (shared by the bodies of one header: read, never changed)."""

    request: Request
    request_id: str
    timeout_s: float | None
    prefs: OutputPrefs


@dataclass(frozen=True, slots=True)
class _Layout:
    head: bytes  # the ModelInferRequest's fields but raw_input_contents
    sizes: tuple[int, ...]  # each raw input's bytes, one after the other after the header
    body_bytes: int
    request_id: str
    timeout_s: float | None
    prefs: OutputPrefs


class Layouts:
    """The layouts of the headers seen last, by (model, version, header bytes); at most
    ``entries``, the oldest forgotten first. Only a body the codec accepted is remembered,
    so a refused one is parsed, and refused, every time."""

    def __init__(self, entries: int = ENTRIES) -> None:
        self.entries = entries
        self._known: dict[tuple[str, str, bytes], _Layout] = {}

    def decode(self, body: Buffer, json_length: int | None, model: str,
               version: str) -> Decoded:
        if json_length is None or not 0 < json_length <= min(MAX_HEADER_BYTES, len(body)):
            return _parsed(body, json_length, model, version)[0]
        view = memoryview(body)
        key = (model, version, bytes(view[:json_length]))
        layout = self._known.get(key)
        if layout is None or layout.body_bytes != len(body):
            decoded, layout = _parsed(body, json_length, model, version)
            if layout is not None:
                self._remember(key, layout)
            return decoded
        tensors: list[Buffer] = []
        start = json_length
        for size in layout.sizes:
            tensors.append(view[start:start + size])
            start += size
        return Decoded(from_head(layout.head, tensors), layout.request_id, layout.timeout_s,
                       layout.prefs)

    def _remember(self, key: tuple[str, str, bytes], layout: _Layout) -> None:
        if len(self._known) >= self.entries:
            del self._known[next(iter(self._known))]
        self._known[key] = layout


def _parsed(body: Buffer, json_length: int | None, model: str,
            version: str) -> tuple[Decoded, _Layout | None]:
    """The codec's answer, and the layout to keep when every raw input is a piece of the
    body after the header, in order (none inline as JSON data)."""
    request, tensors, prefs = decode_infer_parts(body, json_length, model, version)
    timeout_s = timeout_of(request)
    if json_length is not None:
        raws: list[Buffer] = list(tensors) if tensors else list(request.raw_input_contents)
        sizes = tuple(len(raw) for raw in raws)
        if json_length + sum(sizes) == len(body):
            if not tensors:  # NOTE: a small body's tensors went into the message
                del request.raw_input_contents[:]
            head = request.SerializeToString()
            layout = _Layout(head, sizes, len(body), request.id, timeout_s, prefs)
            return Decoded(from_head(head, raws), request.id, timeout_s, prefs), layout
    return Decoded(from_head(request.SerializeToString(), tensors), request.id, timeout_s,
                   prefs), None


def timeout_of(request: pb.ModelInferRequest) -> float | None:
    """Triton's `timeout` request parameter (microseconds) as the request's deadline."""
    if "timeout" not in request.parameters:
        return None
    value = request.parameters["timeout"]
    if value.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param") or (
            value.int64_param or value.uint64_param) <= 0:
        raise invalid_argument("parameter 'timeout': expected a positive whole number of "
                               "microseconds")
    return (value.int64_param or value.uint64_param) / 1e6
