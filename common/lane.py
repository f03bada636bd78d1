"""The lane between gateway and runtime: many calls multiplexed as length-prefixed frames.

A frame is a fixed header (payload length, call id, kind, timeout in µs) and its payload. A
request's kind names the RPC; an answer's kind is OK (the serialized response) or ERROR (one
byte of gRPC status code, then the UTF-8 message). Frames that arrive together are written and
read together, so a burst of requests costs one system call each way.
"""

from __future__ import annotations

import struct

import grpc

from common.errors import TensorgateError

HEADER = struct.Struct("<IQBI")
METHODS = ("ModelInfer", "ServerLive", "ServerReady", "ServerMetadata", "ModelReady",
           "ModelMetadata", "ModelConfig", "ModelStatistics", "RepositoryIndex",
           "RepositoryModelLoad", "RepositoryModelUnload")
METHOD_KIND = {name: kind for kind, name in enumerate(METHODS)}
OK = 0
ERROR = 1
MAX_TIMEOUT_US = 2**32 - 1
_CODES = {code.value[0]: code for code in grpc.StatusCode}

Frame = tuple[int, int, int, bytes]


def header(call_id: int, kind: int, size: int, timeout_us: int = 0) -> bytes:
    return HEADER.pack(size, call_id, kind, timeout_us)


def error_payload(error: TensorgateError) -> bytes:
    return bytes((error.code.value[0],)) + error.message.encode()


def parse_error(payload: bytes) -> TensorgateError:
    code = _CODES.get(payload[0], grpc.StatusCode.UNKNOWN) if payload else grpc.StatusCode.UNKNOWN
    return TensorgateError(code, payload[1:].decode(errors="replace"))


def timeout_us(timeout: float | None) -> int:
    """A timeout in seconds as the header's field: 0 means none."""
    if timeout is None:
        return 0
    return min(MAX_TIMEOUT_US, max(1, int(timeout * 1e6)))


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
            frames.append((call_id, kind, timeout, bytes(buffer[start : start + size])))
            offset = start + size
        del buffer[:offset]
        return frames
