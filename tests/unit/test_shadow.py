"""The shadow stage: background copies that never hold up the primary, counted and compared."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from common.errors import TensorgateError, unavailable
from common.policy import TrafficPolicy
from common.proto import grpc_service_pb2 as pb
from common.tensors import serialize_bytes
from gateway.metrics import GatewayMetrics
from gateway.shadow import Shadow, ShadowCall, agree, should_shadow

MODEL, VERSION = "digits", "2"
ROWS = np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1]], dtype=np.float32)
# The same winners in every row, with different probabilities.
SAME_WINNERS = np.array([[0.3, 0.4, 0.3], [0.5, 0.3, 0.2]], dtype=np.float32)
# The second row picks another class.
OTHER_WINNER = np.array([[0.1, 0.7, 0.2], [0.1, 0.1, 0.8]], dtype=np.float32)


def _response(outputs: dict[str, np.ndarray], raw: bool = True, datatype: str = "") -> bytes:
    response = pb.ModelInferResponse(model_name=MODEL, model_version="1", id="r1")
    for name, array in outputs.items():
        kind = datatype or {"float32": "FP32", "int64": "INT64"}[array.dtype.name]
        tensor = response.outputs.add(name=name, datatype=kind, shape=list(array.shape))
        if raw:
            response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
        elif kind == "FP32":
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
        else:
            tensor.contents.int64_contents.extend(array.ravel().tolist())
    return response.SerializeToString()


class Recorder:
    """A GatewayMetrics on its own registry, and the numbers read back from it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)

    def requests(self, code: str) -> float:
        labels = {"model": MODEL, "version": VERSION, "code": code}
        return self.registry.get_sample_value("tensorgate_shadow_requests_total", labels) or 0.0

    def agreement(self, agree: str) -> float:
        labels = {"model": MODEL, "version": VERSION, "agree": agree}
        return self.registry.get_sample_value("tensorgate_shadow_agreement_total", labels) or 0.0

    def latency(self, suffix: str) -> float:
        labels = {"model": MODEL, "version": VERSION}
        name = f"tensorgate_shadow_duration_seconds_{suffix}"
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _answering(answer: bytes, delay: float = 0.0) -> ShadowCall:
    async def call(model: str, version: str, request: bytes, timeout: float) -> bytes:
        assert (model, version, request) == (MODEL, VERSION, b"request")
        await asyncio.sleep(delay)
        return answer

    return call


def _raising(make_error: Callable[[], Exception]) -> ShadowCall:
    async def call(model: str, version: str, request: bytes, timeout: float) -> bytes:
        raise make_error()

    return call


async def _hanging(model: str, version: str, request: bytes, timeout: float) -> bytes:
    await asyncio.Event().wait()
    raise AssertionError("never answers")


def _answered(answer: bytes) -> asyncio.Future[bytes]:
    future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    future.set_result(answer)
    return future


async def test_the_primary_answers_before_a_slow_shadow(recorder: Recorder) -> None:
    shadow = Shadow(recorder.metrics, _answering(_response({"probs": SAME_WINNERS}), delay=0.3))

    async def forward_primary() -> bytes:
        await asyncio.sleep(0.01)
        return _response({"probs": ROWS})

    primary = asyncio.ensure_future(forward_primary())
    assert shadow.send(MODEL, VERSION, b"request", primary)
    # NOTE: a ceiling only; the order is what is asserted: the shadow is still in flight.
    answer = await asyncio.wait_for(primary, 60.0)
    assert answer == _response({"probs": ROWS})
    assert shadow.in_flight == 1
    assert recorder.requests("OK") == 0
    await shadow.drain()
    assert shadow.in_flight == 0
    assert recorder.requests("OK") == 1
    assert recorder.latency("count") == 1
    assert recorder.latency("sum") >= 0.3
    assert recorder.agreement("true") == 1
    assert recorder.agreement("false") == 0


async def test_a_disagreeing_shadow_is_counted(recorder: Recorder) -> None:
    shadow = Shadow(recorder.metrics, _answering(_response({"probs": OTHER_WINNER})))
    shadow.send(MODEL, VERSION, b"request", _answered(_response({"probs": ROWS})))
    await shadow.drain()
    assert recorder.requests("OK") == 1
    assert recorder.agreement("false") == 1
    assert recorder.agreement("true") == 0


@pytest.mark.parametrize(
    ("make_error", "code"),
    [
        (lambda: unavailable("runtime down"), "UNAVAILABLE"),
        (lambda: RuntimeError("bug"), "UNKNOWN"),
    ],
)
async def test_a_failing_shadow_is_counted_and_raises_nothing(
    recorder: Recorder, make_error: Callable[[], Exception], code: str
) -> None:
    shadow = Shadow(recorder.metrics, _raising(make_error))
    primary = _answered(_response({"probs": ROWS}))
    assert shadow.send(MODEL, VERSION, b"request", primary)
    tasks = list(shadow._tasks)
    await shadow.drain()
    assert all(task.exception() is None for task in tasks)
    assert recorder.requests(code) == 1
    assert recorder.requests("OK") == 0
    assert recorder.agreement("true") == recorder.agreement("false") == 0
    assert primary.result() == _response({"probs": ROWS})


async def test_a_hanging_shadow_is_cut_at_its_deadline(recorder: Recorder) -> None:
    shadow = Shadow(recorder.metrics, _hanging, timeout_s=0.05)
    shadow.send(MODEL, VERSION, b"request", _answered(_response({"probs": ROWS})))
    await asyncio.wait_for(shadow.drain(), 60.0)
    assert recorder.requests("DEADLINE_EXCEEDED") == 1
    # NOTE: cut at its deadline, not left hanging; the ceiling is generous for a loaded machine.
    assert 0.05 <= recorder.latency("sum") < 30.0
    assert shadow.in_flight == 0


async def test_copies_beyond_the_bound_are_dropped(recorder: Recorder) -> None:
    release = asyncio.Event()

    async def call(model: str, version: str, request: bytes, timeout: float) -> bytes:
        await release.wait()
        return _response({"probs": ROWS})

    shadow = Shadow(recorder.metrics, call, max_in_flight=2)
    primary = _answered(_response({"probs": ROWS}))
    sent = [shadow.send(MODEL, VERSION, b"request", primary) for _ in range(5)]
    assert sent == [True, True, False, False, False]
    assert shadow.in_flight == 2
    assert recorder.requests("DROPPED") == 3
    release.set()
    await shadow.drain()
    assert recorder.requests("OK") == 2
    assert recorder.agreement("true") == 2
    assert shadow.send(MODEL, VERSION, b"request", primary)  # room again
    await shadow.drain()


async def test_a_failed_primary_counts_the_shadow_but_not_agreement(recorder: Recorder) -> None:
    shadow = Shadow(recorder.metrics, _answering(_response({"probs": ROWS})))
    primary: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    primary.set_exception(unavailable("primary down"))
    shadow.send(MODEL, VERSION, b"request", primary)
    await shadow.drain()
    assert recorder.requests("OK") == 1
    assert recorder.agreement("true") == recorder.agreement("false") == 0
    with pytest.raises(TensorgateError):
        primary.result()


async def test_close_cancels_the_copies_but_never_the_primary(recorder: Recorder) -> None:
    shadow = Shadow(recorder.metrics, _answering(_response({"probs": ROWS})), timeout_s=5.0)
    primary: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    shadow.send(MODEL, VERSION, b"request", primary)  # waits for the primary to compare
    hanging = Shadow(recorder.metrics, _hanging, timeout_s=5.0)
    hanging.send(MODEL, VERSION, b"request", primary)
    await asyncio.sleep(0.02)
    await asyncio.wait_for(shadow.close(), 1.0)
    await asyncio.wait_for(hanging.close(), 1.0)
    assert shadow.in_flight == hanging.in_flight == 0
    assert recorder.requests("CANCELLED") == 1
    assert recorder.requests("OK") == 1
    assert not primary.done()
    primary.set_result(b"")


def test_classifier_rows_agree_by_argmax() -> None:
    assert agree(_response({"probs": ROWS}), _response({"probs": SAME_WINNERS})) is True
    assert agree(_response({"probs": ROWS}), _response({"probs": OTHER_WINNER})) is False


def test_outputs_without_a_class_axis_agree_when_close() -> None:
    scores = np.array([[0.5], [2.0]], dtype=np.float32)
    assert agree(_response({"score": scores}), _response({"score": scores * 1.0005})) is True
    assert agree(_response({"score": scores}), _response({"score": scores * 1.01})) is False


def test_typed_contents_compare_with_raw_contents() -> None:
    assert agree(_response({"probs": ROWS}, raw=False), _response({"probs": SAME_WINNERS})) is True
    labels = np.array([[1], [0]], dtype=np.int64)
    assert agree(_response({"label": labels}, raw=False), _response({"label": labels})) is True
    assert agree(_response({"label": labels}), _response({"label": labels[::-1].copy()})) is False


def test_every_output_must_agree() -> None:
    labels = np.array([[1], [0]], dtype=np.int64)
    primary = _response({"probs": ROWS, "label": labels})
    assert agree(primary, _response({"probs": SAME_WINNERS, "label": labels})) is True
    assert agree(primary, _response({"probs": SAME_WINNERS, "label": labels + 1})) is False


def test_bytes_outputs_agree_when_equal() -> None:
    def text(*items: bytes) -> bytes:
        response = pb.ModelInferResponse(model_name=MODEL)
        response.outputs.add(name="text", datatype="BYTES", shape=[len(items)])
        response.raw_output_contents.append(serialize_bytes(items))
        return response.SerializeToString()

    assert agree(text(b"cat", b"dog"), text(b"cat", b"dog")) is True
    assert agree(text(b"cat", b"dog"), text(b"cat", b"cow")) is False


@pytest.mark.parametrize(
    "shadow",
    [
        _response({"probs": ROWS[:1]}),  # another shape
        _response({"probs": ROWS.reshape(3, 2)}),  # same size, another shape
        _response({"other": ROWS}),  # another output name
        _response({"probs": ROWS, "extra": ROWS}),  # one output more
        _response({"probs": ROWS.view(np.int32).astype(np.int64)}),  # another datatype
        b"\xff\xff\xff",  # not a response
    ],
)
def test_answers_that_cannot_be_compared_give_none(shadow: bytes) -> None:
    assert agree(_response({"probs": ROWS}), shadow) is None


def test_raw_contents_that_do_not_fill_the_shape_give_none() -> None:
    response = pb.ModelInferResponse(model_name=MODEL)
    response.outputs.add(name="probs", datatype="FP32", shape=[2, 3])
    response.raw_output_contents.append(ROWS.tobytes()[:-4])
    assert agree(_response({"probs": ROWS}), response.SerializeToString()) is None


def _shadowing(percent: float, version: str | None = "2") -> TrafficPolicy:
    return TrafficPolicy(
        model=MODEL, weights=(("1", 100),), shadow_version=version, shadow_percent=percent
    )


def test_should_shadow_copies_its_percentage() -> None:
    rng = random.Random(11)
    copied = sum(should_shadow(_shadowing(25.0), rng, "1") for _ in range(10_000))
    assert copied / 10_000 == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize(
    ("policy", "primary", "expected"),
    [
        (_shadowing(100.0), "1", True),
        (_shadowing(0.0), "1", False),
        (_shadowing(100.0, version=None), "1", False),
        (_shadowing(100.0), "2", False),  # the primary already is the shadow version
    ],
)
def test_should_shadow_edges(policy: TrafficPolicy, primary: str, expected: bool) -> None:
    rng = random.Random(3)
    assert [should_shadow(policy, rng, primary) for _ in range(100)] == [expected] * 100
