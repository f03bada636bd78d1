"""HTTP infer bodies decoded through the header layouts: the same request as the codec makes,
every time, whether the header was seen before or not."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from gateway import http_layouts
from gateway.http_codec import decode_infer_parts
from gateway.http_layouts import Layouts
from gateway.request_parts import Parts, from_head, whole


def body(*tensors: np.ndarray, extra: dict | None = None) -> tuple[bytes, int]:
    """A binary-tensor body as tritonclient sends it, and its JSON header's length."""
    header = {"inputs": [{"name": f"IN{i}", "datatype": "FP32", "shape": list(t.shape),
                          "parameters": {"binary_data_size": t.nbytes}}
                         for i, t in enumerate(tensors)],
              "outputs": [{"name": "OUT", "parameters": {"binary_data": True}}]} | (extra or {})
    text = orjson.dumps(header)
    return text + b"".join(t.tobytes() for t in tensors), len(text)


def codec(data: bytes, length: int | None) -> bytes:
    request, tensors, _ = decode_infer_parts(data, length, "m", "1")
    return whole(from_head(request.SerializeToString(), tensors))


def rows(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, count), dtype=np.float32)


@pytest.mark.parametrize("count", [3, 8192])  # inline, and large enough to go in parts
def test_a_known_header_gives_the_codecs_request_with_this_bodys_tensors(count: int) -> None:
    layouts = Layouts()
    first, length = body(rows(1, count), rows(2, 5))
    second, again = body(rows(3, count), rows(4, 5))
    assert again == length and first[:length] == second[:length] and first != second
    assert whole(layouts.decode(first, length, "m", "1").request) == codec(first, length)
    decoded = layouts.decode(second, length, "m", "1")
    assert len(layouts._known) == 1
    assert whole(decoded.request) == codec(second, length)
    assert isinstance(decoded.request, Parts) == (count == 8192)
    message = pb.ModelInferRequest.FromString(whole(decoded.request))
    assert message.raw_input_contents[0] == rows(3, count).tobytes()  # this body's, not the last
    assert decoded.prefs.per_output == {"OUT": True}


def test_the_id_and_deadline_come_with_the_header() -> None:
    layouts = Layouts()
    data, length = body(rows(1, 4), extra={"id": "abc", "parameters": {"timeout": 2_500_000}})
    for _ in range(2):
        decoded = layouts.decode(data, length, "m", "1")
        assert (decoded.request_id, decoded.timeout_s) == ("abc", 2.5)


def test_a_refused_body_is_refused_every_time_and_never_kept() -> None:
    layouts = Layouts()
    good, length = body(rows(1, 4))
    layouts.decode(good, length, "m", "1")
    for bad in (good + b"x", good[:-1]):  # bytes beyond the tensors; a tensor cut short
        for _ in range(2):
            with pytest.raises(TensorgateError, match=r"beyond|past the end"):
                layouts.decode(bad, length, "m", "1")
    data, length = body(rows(1, 4), extra={"parameters": {"timeout": -1}})
    for _ in range(2):
        with pytest.raises(TensorgateError, match="timeout"):
            layouts.decode(data, length, "m", "1")
    assert len(layouts._known) == 1


def test_headers_with_inline_data_or_none_are_decoded_but_not_kept() -> None:
    layouts = Layouts()
    header = {"inputs": [{"name": "A", "datatype": "INT32", "shape": [2], "data": [1, 2]},
                         {"name": "B", "datatype": "FP32", "shape": [1, 4],
                          "parameters": {"binary_data_size": 16}}]}
    text = orjson.dumps(header)
    mixed = text + rows(5, 4).tobytes()
    plain = orjson.dumps({"inputs": header["inputs"][:1]})
    for data, length in ((mixed, len(text)), (plain, None)):
        for _ in range(2):
            assert whole(layouts.decode(data, length, "m", "1").request) == codec(data, length)
    assert not layouts._known


def test_the_layouts_are_bounded_oldest_first_and_keyed_by_model() -> None:
    layouts = Layouts(entries=2)
    bodies = [body(rows(i, i + 1)) for i in range(3)]
    for data, length in bodies:
        layouts.decode(data, length, "m", "1")
    assert [key[2] for key in layouts._known] == [d[:n] for d, n in bodies[1:]]
    data, length = bodies[2]
    other = layouts.decode(data, length, "other", "")
    assert pb.ModelInferRequest.FromString(whole(other.request)).model_name == "other"


def test_a_long_header_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_layouts, "MAX_HEADER_BYTES", 64)
    layouts = Layouts()
    data, length = body(rows(1, 4))
    assert length > 64
    assert whole(layouts.decode(data, length, "m", "1").request) == codec(data, length)
    assert not layouts._known
