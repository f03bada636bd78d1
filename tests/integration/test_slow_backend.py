"""A slow or stuck backend trips deadlines (DEADLINE_EXCEEDED / 504) and never blocks the other
models of the same runtime worker. The backend is loadtest/sleepy.py's, added in the test only."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from loadtest.sleepy import sleepy_model
from runtime.model import ServedModel
from tests.integration.sleepy_stack import Stack
from tests.integration.test_overload import SLEEPY_BODY, post

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 1.0


def _models(release: threading.Event) -> list[ServedModel]:
    """`stuck` (hangs) and `slow` (0.3 s)."""
    return [sleepy_model(-1, 1, release, name="stuck"),
            sleepy_model(0.3, 1, release, name="slow")]


def slow_stack() -> Stack:
    """digits, `stuck` and `slow`, behind a gateway whose default deadline is DEADLINE_S."""
    return Stack(_models, DEADLINE_S)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with slow_stack() as running:
        yield running


def digits_call(client: tgrpc.InferenceServerClient) -> None:
    rows = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    tensor = tgrpc.InferInput("INPUT0", [2, 64], "FP32")
    tensor.set_data_from_numpy(rows)
    answer = client.infer("digits", [tensor], model_version="1", client_timeout=30)
    assert answer.as_numpy("OUTPUT0").shape == (2, 10)


def test_a_stuck_model_answers_504_at_its_deadline_and_other_models_go_on(stack: Stack) -> None:
    http = stack.gateway.http_port
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{stack.gateway.grpc_port}")
    with ThreadPoolExecutor(4) as pool:
        stuck = [pool.submit(post, http, "/v2/models/stuck/infer", SLEEPY_BODY)
                 for _ in range(4)]
        # NOTE: every digits call here is made while the stuck calls are waiting: the count is
        # what proves the worker is not blocked, not how fast each call was.
        served = 0
        while not any(f.done() for f in stuck):
            digits_call(client)
            served += 1
        answers = [f.result() for f in stuck]
    assert served >= 5
    for status, _, body in answers:
        assert status == 504
        assert "did not answer within" in body["error"], body


def test_grpc_deadlines_are_kept_too(stack: Stack) -> None:
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{stack.gateway.grpc_port}")
    tensor = tgrpc.InferInput("INPUT0", [4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32))
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("stuck", [tensor], client_timeout=0.5)
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 30  # it came back: nothing hung


def test_a_slow_model_within_its_deadline_is_answered(stack: Stack) -> None:
    status, _, body = post(stack.gateway.http_port, "/v2/models/slow/infer", SLEEPY_BODY)
    assert status == 200 and body["outputs"][0]["data"] == [0, 2, 4, 6]
