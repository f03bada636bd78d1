"""The answer log's flusher on a real `answers.db`: batches, two processes, feedback, pruning."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import orjson
import pytest

from common.proto import grpc_service_pb2 as pb
from gateway.answer_store import AnswerStore, answers_path
from gateway.answers import AnswerLog
from gateway.feedback import post_feedback
from tensorgate import ab
from tests.waiting import until_async


def answer(version: str, predicted: int, request_id: str) -> bytes:
    """A digits-like answer: [1, 10] probabilities whose argmax is `predicted`."""
    probs = np.full(10, 0.01, "<f4")
    probs[predicted] = 0.91
    message = pb.ModelInferResponse(model_name="digits", model_version=version, id=request_id)
    message.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 10])
    message.raw_output_contents.append(probs.tobytes())
    return message.SerializeToString()


async def test_the_threshold_wakes_the_flusher_before_its_timer(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path / "answers.db", threshold=100, interval_s=60)
    log.start()
    for i in range(100):
        log.record(str(i), "digits", "1", "OK", 0.001, answer("1", i % 10, str(i)))
    await until_async(lambda: log.written == 100, "100 answers written")
    await log.stop()


async def test_the_timer_flushes_a_trickle(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path / "answers.db", threshold=10_000, interval_s=0.05)
    log.start()
    log.record("a", "digits", "1", "OK", 0.001, None)
    await until_async(lambda: log.written == 1, "the answer written")
    await log.stop()


async def test_two_gateway_processes_feedback_and_the_report(tmp_path: Path) -> None:
    """Two logs share the file, as gateway processes do; truth for answers still buffered in
    the other process is reported unmatched, kept, and joined once that process flushes."""
    path = answers_path(tmp_path / "tensorgate.db")
    front = AnswerLog(path, threshold=50, interval_s=0.05)
    back = AnswerLog(path, threshold=10**9, interval_s=600)  # flushes only when stopped
    front.start()
    back.start()
    truth = {}
    for i in range(400):
        version, log = ("1", front) if i % 2 else ("2", back)
        request_id = f"req-{i}"
        truth[request_id] = i % 10
        # Version 1 is right 3 times in 4; version 2 always.
        predicted = (i % 10 + 1) % 10 if version == "1" and i % 8 == 1 else i % 10
        code = "UNAVAILABLE" if i in (7, 9) else "OK"
        log.record(request_id, "digits", "" if code == "OK" else version, code, 0.002,
                   answer(version, predicted, request_id) if code == "OK" else None)
    body = orjson.dumps({"feedback": [{"id": k, "truth": v} for k, v in truth.items()]})
    assert await post_feedback(front, "digits", body) == {"recorded": 400, "unmatched": 200}
    await front.stop()
    await back.stop()
    assert (front.written, back.written, front.dropped + back.dropped) == (200, 200, 0)
    with AnswerStore(path, create=False) as store:
        report = ab.build_report("digits", store.outcomes("digits", 0),
                                 store.labelled("digits", 0), baseline="1").summary
    one, two = report["versions"]
    assert (one["requests"], one["errors"], one["labelled"]) == (200, 2, 198)
    assert one["accuracy"] == pytest.approx(149 / 198)  # 50 wrong, one of them failed
    assert (two["requests"], two["labelled"], two["accuracy"]) == (200, 200, 1.0)
    assert report["comparisons"][0]["recommendation"] == "promote"


async def test_pruning_keeps_the_newest_rows_per_model(tmp_path: Path) -> None:
    path = tmp_path / "answers.db"
    clock = itertools.count(1)
    log = AnswerLog(path, keep=1000, threshold=500, clock=lambda: float(next(clock)))
    log.start()
    for i in range(3000):  # at 1..500, then (after the early feedback at 501) 502..3001
        log.record(f"r{i}", "big", "1", "OK", 0.001, None)
        if i == 499:
            assert await log.feedback_many("big", [(f"r{j}", 1.0) for j in range(100)]) == (
                100, 0)
    log.record("s", "small", "1", "OK", 0.001, None)
    await log.feedback_many("big", [(f"r{j}", 1.0) for j in range(2500, 3000)])
    await log.stop()
    with AnswerStore(path, keep=1000) as store:
        count = store.conn.execute("SELECT COUNT(*) FROM answers WHERE model = 'big'").fetchone()
        assert 1000 <= count[0] <= 2000  # pruned every `prune_every` rows, not every batch
        store.prune("big")
        rows = store.conn.execute(
            "SELECT MIN(at), MAX(at), COUNT(*) FROM answers WHERE model = 'big'").fetchone()
        assert rows == (2002.0, 3001.0, 1000)
        assert store.outcomes("small", 0) == [("1", "OK", 0.001)]
        # The early truth (for answers now pruned) is gone; the late truth stays.
        assert store.conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 500
