"""The lane between gateway and runtime: many calls multiplexed as length-prefixed frames.

A frame is a fixed header (payload length, call id, kind, timeout in µs) and its payload. A
request's kind names the RPC; an answer's kind is OK (the serialized response) or ERROR (one
byte of gRPC status code, then the UTF-8 message). Frames that arrive together are written and
read together, so a burst of requests costs one system call each way. The first frame each way
is a HELLO naming the lane's version; on one host, tensors may travel by reference (arena.py).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import grpc
import numpy as np

from common.errors import TensorgateError

HEADER = struct.Struct("<IQBI")
METHODS = ("ModelInfer", "ServerLive", "ServerReady", "ServerMetadata", "ModelReady",
           "ModelMetadata", "ModelConfig", "ModelStatistics", "RepositoryIndex",
           "RepositoryModelLoad", "RepositoryModelUnload",
           "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
           "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus", "CudaSharedMemoryRegister",
           "CudaSharedMemoryUnregister")
METHOD_KIND = {name: kind for kind, name in enumerate(METHODS)}
OK = 0
ERROR = 1
MAX_TIMEOUT_US = 2**32 - 1
_CODES = {code.value[0]: code for code in grpc.StatusCode}

#: The lane protocol's version. Releases before the hello spoke version 1 (and sent none): a
#: gateway and a runtime of different versions refuse each other rather than misread frames.
VERSION = 2
#: Both ways, first, call id 0: the version, then a JSON object of what the sender offers.
HELLO = 255
#: Gateway to runtime: ModelInfer with its tensors' bytes in the gateway's arena (refs_frame).
INFER_REF = 254
#: Gateway to runtime, call id 0: output slots the gateway has copied out (u64 offsets).
RELEASE = 253
#: Runtime to gateway: OK, with raw_output_contents in the runtime's arena (refs_frame).
OK_REF = 2
#: A peer that sends no hello within this is disconnected; a hello is at most this large.
HELLO_TIMEOUT_S = 5.0
MAX_HELLO_BYTES = 4096
_U32 = struct.Struct("<I")
_REF = struct.Struct("<QQ")
OFFSET = struct.Struct("<Q")

Frame = tuple[int, int, int, bytes | bytearray | memoryview]
Buffer = bytes | bytearray | memoryview
#: Payloads from this size on are read by the kernel straight into a buffer of their own.
DIRECT_FROM_BYTES = 64 * 1024
#: At most this much is read into the scratch buffer at once: enough for a burst of small
#: frames, little of a large one's payload to copy out once its header is seen.
READ_WINDOW_BYTES = 32 * 1024


def header(call_id: int, kind: int, size: int, timeout_us: int = 0) -> bytes:
    return HEADER.pack(size, call_id, kind, timeout_us)


def error_payload(error: TensorgateError) -> bytes:
    return bytes((error.code.value[0],)) + error.message.encode()


def parse_error(payload: bytes | bytearray | memoryview) -> TensorgateError:
    code = _CODES.get(payload[0], grpc.StatusCode.UNKNOWN) if payload else grpc.StatusCode.UNKNOWN
    return TensorgateError(code, bytes(payload[1:]).decode(errors="replace"))


def timeout_us(timeout: float | None) -> int:
    """A timeout in seconds as the header's field: 0 means none."""
    if timeout is None:
        return 0
    return min(MAX_TIMEOUT_US, max(1, int(timeout * 1e6)))


def hello(features: dict[str, Any], version: int = VERSION) -> bytes:
    """A whole HELLO frame: the version, then what the sender offers or accepts."""
    payload = _U32.pack(version) + json.dumps(features).encode()
    return header(0, HELLO, len(payload)) + payload


def parse_hello(payload: Buffer) -> tuple[int, dict[str, Any]]:
    """(version, features) of a HELLO's payload; ValueError for one that is not a hello."""
    if len(payload) < _U32.size:
        raise ValueError("a lane hello shorter than its version")
    features = json.loads(bytes(payload[_U32.size:]) or b"{}")
    if not isinstance(features, dict):
        raise ValueError("a lane hello whose features are not a JSON object")
    return _U32.unpack_from(payload)[0], features


def mismatch(gateway: int | str, runtime: int | str) -> str:
    """What both sides say when their versions differ."""
    return (f"lane protocol mismatch: the gateway speaks lane version {gateway}, the runtime "
            f"worker lane version {runtime}; run the same tensorgate release on both sides")


def refs_frame(call_id: int, kind: int, refs: list[tuple[int, int]], rest: Buffer,
               timeout: int = 0) -> list[Buffer]:
    """A by-reference frame: the count of (offset, length) refs, the refs, then ``rest`` (the
    message without the fields the refs stand for)."""
    table = refs_table(refs)
    return [header(call_id, kind, len(table) + len(rest), timeout), table, rest]


def refs_table(refs: list[tuple[int, int]]) -> bytes:
    """The start of a by-reference frame's payload: the count of refs, then each."""
    return _U32.pack(len(refs)) + b"".join(_REF.pack(o, n) for o, n in refs)


def parse_refs(payload: Buffer) -> tuple[list[tuple[int, int]], memoryview]:
    """The refs and the rest of a by-reference frame; ValueError for a malformed one."""
    view = memoryview(payload)
    if len(view) < _U32.size:
        raise ValueError("a by-reference lane frame shorter than its count of refs")
    count = _U32.unpack_from(view)[0]
    end = _U32.size + count * _REF.size
    if end > len(view):
        raise ValueError(f"a by-reference lane frame of {len(view)} bytes cannot hold "
                         f"{count} refs")
    refs = [_REF.unpack_from(view, _U32.size + i * _REF.size) for i in range(count)]
    return refs, view[end:]


class FrameReader:
    """Cuts a byte stream into frames; refuses a frame larger than the limit."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        buffer = self.buffer
        buffer += data
        offset = 0
        end = len(buffer)
        size_of = HEADER.size
        while end - offset >= size_of:
            size, call_id, kind, timeout = HEADER.unpack_from(buffer, offset)
            if size > self.max_payload:
                raise ValueError(f"lane frame of {size} bytes exceeds the limit of "
                                 f"{self.max_payload}")
            start = offset + size_of
            if end - start < size:
                break
            with memoryview(buffer) as view:
                frames.append((call_id, kind, timeout, bytes(view[start : start + size])))
            offset = start + size
        del buffer[:offset]
        return frames


class FrameBuffer:
    """The receiving end of an ``asyncio.BufferedProtocol``: frames arrive in a scratch buffer
    and small payloads are copied out of it once; the kernel writes a large payload straight
    into a buffer of its own, which is handed on as it is."""

    def __init__(self, max_payload: int, window: int = READ_WINDOW_BYTES) -> None:
        self.max_payload = max_payload
        self.window = max(1, window)
        # Room for a partial frame below DIRECT_FROM_BYTES and a window after it.
        self.scratch = bytearray(HEADER.size + DIRECT_FROM_BYTES + self.window)
        self.view = memoryview(self.scratch)
        self.filled = 0
        self.large: memoryview | None = None
        self.large_filled = 0
        self.large_head = (0, 0, 0)

    def get_buffer(self) -> memoryview:
        """Where the next bytes from the socket go."""
        if self.large is not None:
            return self.large[self.large_filled:]
        return self.view[self.filled : self.filled + self.window]

    def received(self, count: int) -> list[Frame]:
        """``count`` bytes were written into the last buffer; the frames now complete."""
        if self.large is None:
            self.filled += count
            return self._cut()
        self.large_filled += count
        if self.large_filled < len(self.large):
            return []
        frame = (*self.large_head, self.large)
        self.large = None
        return [frame]

    def _cut(self) -> list[Frame]:
        frames: list[Frame] = []
        offset, end, view = 0, self.filled, self.view
        while end - offset >= HEADER.size:
            size, call_id, kind, timeout = HEADER.unpack_from(self.scratch, offset)
            if size > self.max_payload:
                raise ValueError(f"lane frame of {size} bytes exceeds the limit of "
                                 f"{self.max_payload}")
            start = offset + HEADER.size
            if end - start >= size:
                frames.append((call_id, kind, timeout, bytes(view[start : start + size])))
                offset = start + size
            elif size >= DIRECT_FROM_BYTES:
                # NOTE: numpy's empty, not bytearray(size): the kernel fills every byte, so
                # zeroing them first is a wasted pass over an image-sized payload.
                self.large = np.empty(size, np.uint8).data
                self.large[: end - start] = view[start:end]
                self.large_filled, self.large_head = end - start, (call_id, kind, timeout)
                offset = end
            else:
                break
        rest = end - offset
        if offset and rest:
            self.scratch[:rest] = bytes(view[offset:end])  # a partial frame, to the front
        self.filled = rest
        return frames
