"""Hand-built HTTP/2 frames for the hostile-caller tests: what no well-behaved client sends
(half a call, a stream never finished, a message with an unknown encoding)."""

from __future__ import annotations

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0, 1, 3, 4, 7
END_STREAM, END_HEADERS = 0x1, 0x4


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags))
            + stream.to_bytes(4, "big") + payload)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer with an N-bit prefix (RFC 7541 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def string(text: str) -> bytes:
    """An HPACK string literal, not Huffman-coded."""
    raw = text.encode()
    return _integer(len(raw), 7, 0) + raw


def header_block(authority: str, path: str) -> bytes:
    """POST ``path`` with gRPC's headers, literal fields never entering the dynamic table."""
    return (b"\x83\x86"  # :method POST, :scheme http (static table 3 and 6)
            + _integer(4, 4, 0) + string(path)  # :path, name from static table 4
            + _integer(1, 4, 0) + string(authority)  # :authority (1)
            + _integer(31, 4, 0) + string("application/grpc")  # content-type (31)
            + b"\x00" + string("te") + string("trailers"))
