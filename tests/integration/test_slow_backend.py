"""A slow or stuck backend trips deadlines (DEADLINE_EXCEEDED / 504) and never blocks the other
models of the same runtime worker. The backend is loadtest/sleepy.py's, added in the test only."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from common.settings import AuthSettings, GatewaySettings, RuntimeSettings
from gateway.app import Gateway
from loadtest.sleepy import sleepy_model, store_with
from runtime.app import Runtime
from tests.integration.test_overload import SLEEPY_BODY, post

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 1.0


class Stack:
    """digits, `stuck` (hangs) and `slow` (0.3 s) on one in-process runtime worker, behind an
    in-process gateway whose default deadline is DEADLINE_S."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _start(self) -> None:
        settings = RuntimeSettings(model_repository=ROOT / "models", listen="127.0.0.1:0",
                                   lane="127.0.0.1:0", threads=1)
        store = store_with(settings, sleepy_model(-1, 1, self.release, name="stuck"),
                           sleepy_model(0.3, 1, self.release, name="slow"))
        self.runtime = Runtime(settings, store)
        await self.runtime.start()
        self.gateway = Gateway(GatewaySettings(
            host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=-1,
            runtime_endpoints=(self.runtime.lane_address,), default_timeout_s=DEADLINE_S,
            auth=AuthSettings(enabled=False)), registry=CollectorRegistry())
        await self.gateway.start()

    async def _stop(self) -> None:
        await self.gateway.stop(grace=1.0)
        await self.runtime.stop(grace=1.0)

    def __enter__(self) -> Stack:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(120)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack() as running:
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
