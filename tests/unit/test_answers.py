"""The answer log: a bounded buffer, drops counted, answers parsed and written in batches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from common.proto import grpc_service_pb2 as pb
from gateway.answer_store import CLASS, VALUE, AnswerStore, FeedbackFull, answers_path
from gateway.answers import AnswerLog, parse_answer, to_rows


def response(datatype: str, shape: list[int], values: list[float] | None = None,
             version: str = "1", raw: bytes | None = None) -> bytes:
    answer = pb.ModelInferResponse(model_name="m", model_version=version, id="r")
    answer.outputs.add(name="OUTPUT0", datatype=datatype, shape=shape)
    if raw is None and values is not None:
        dtype = {"FP32": "<f4", "FP16": "<f2", "FP64": "<f8", "INT64": "<i8", "BOOL": "?"}
        raw = np.asarray(values, dtype[datatype]).tobytes()
    if raw is not None:
        answer.raw_output_contents.append(raw)
    return answer.SerializeToString()


def test_a_classifier_answer_is_the_argmax_of_its_first_row() -> None:
    probs = [0.1, 0.7, 0.2, 0.9, 0.05, 0.05]  # row 1's argmax (0) must not leak in
    assert parse_answer(response("FP32", [2, 3], probs, "2")) == ("2", CLASS, 1.0)


def test_a_regression_answer_is_its_first_value() -> None:
    version, kind, value = parse_answer(response("FP32", [2, 1], [3.5, 9.0]))
    assert (version, kind) == ("1", VALUE)
    assert value == pytest.approx(3.5)
    assert parse_answer(response("FP64", [3], [1.25, 2.0, 3.0]))[1:] == (VALUE, 1.25)


def test_integer_and_half_precision_outputs() -> None:
    assert parse_answer(response("INT64", [1, 1], [7]))[1:] == (CLASS, 7.0)
    assert parse_answer(response("BOOL", [1], [True]))[1:] == (CLASS, 1.0)
    assert parse_answer(response("FP16", [1, 4], [0.1, 0.2, 0.6, 0.1]))[1:] == (CLASS, 2.0)
    bf16 = (np.asarray([0.25, 0.5, 0.125], "<f4").view("<u4") >> 16).astype("<u2").tobytes()
    assert parse_answer(response("BF16", [1, 3], raw=bf16))[1:] == (CLASS, 1.0)


def test_typed_contents_are_read_when_there_are_no_raw_bytes() -> None:
    answer = pb.ModelInferResponse(model_version="3")
    out = answer.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 4])
    out.contents.fp32_contents.extend([0.0, 0.1, 0.0, 0.8])
    assert parse_answer(answer.SerializeToString()) == ("3", CLASS, 3.0)


@pytest.mark.parametrize("answer", [
    b"\xff\xff\xff",  # not a protobuf message
    pb.ModelInferResponse(model_version="1").SerializeToString(),  # no output
    response("BYTES", [1], raw=b"\x01\x00\x00\x00a"),
    response("FP32", [1, 1], [float("nan")]),
    response("FP32", [1, 3], raw=b""),
])
def test_unreadable_answers_have_no_prediction(answer: bytes) -> None:
    assert parse_answer(answer)[1:] == (None, None)


def test_rows_take_the_served_version_when_the_caller_did_not_know_it() -> None:
    batch = [(10.0, "a", "m", "", "OK", 0.002, response("FP32", [1, 2], [0.2, 0.8], "5")),
             (11.0, "b", "m", "4", "UNAVAILABLE", 0.5, None)]
    assert to_rows(batch) == [("m", "a", "5", "OK", 10.0, 0.002, CLASS, 1.0),
                              ("m", "b", "4", "UNAVAILABLE", 11.0, 0.5, None, None)]


def test_the_buffer_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path / "answers.db", capacity=3, threshold=100)
    for i in range(5):
        log.record(f"r{i}", "m", "1", "OK", 0.001, None)
    assert log.pending() == 3
    assert log.dropped == 2


def test_the_buffer_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path / "answers.db", max_bytes=250, threshold=100)
    for i in range(4):
        log.record(f"r{i}", "m", "1", "OK", 0.001, b"x" * 100)
    log.record("e", "m", "1", "INTERNAL", 0.001, None)  # an error costs no bytes
    assert (log.pending(), log.dropped) == (3, 2)
    log._take()
    log.record("after", "m", "1", "OK", 0.001, b"x" * 100)
    assert log.pending() == 1


def test_record_wakes_the_flusher_past_the_threshold(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path / "answers.db", threshold=2)
    log.record("a", "m", "1", "OK", 0.001, None)
    assert not log._wake.is_set()
    log.record("b", "m", "1", "OK", 0.001, None)
    assert log._wake.is_set()


async def test_flush_writes_the_buffer_as_rows(tmp_path: Path) -> None:
    path = answers_path(tmp_path / "tensorgate.db")
    log = AnswerLog(path, clock=lambda: 100.0)
    log.record("a", "m", "", "OK", 0.004, response("FP32", [1, 3], [0.1, 0.1, 0.8], "2"))
    log.record("b", "m", "1", "INTERNAL", 0.010, None)
    assert await log.flush() == 2
    assert log.pending() == 0
    await log.stop()
    with AnswerStore(path, create=False) as store:
        assert sorted(store.outcomes("m", 0)) == [("1", "INTERNAL", 0.010), ("2", "OK", 0.004)]
    assert log.written == 2
    assert path.stat().st_mode & 0o777 == 0o600


async def test_feedback_writes_this_process_s_buffer_first(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path / "answers.db")
    log.record("a", "m", "1", "OK", 0.001, response("FP32", [1, 2], [0.9, 0.1]))
    assert await log.feedback("m", "a", 0) is True
    assert await log.feedback("m", "nobody", 1) is False
    assert await log.feedback_many("m", [("a", 1), ("z", 2)]) == (2, 1)
    with AnswerStore(tmp_path / "answers.db") as store:
        assert store.labelled("m", 0) == [("1", CLASS, 0.0, 1.0)]  # the later truth wins
    await log.stop()


async def test_a_write_error_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = AnswerLog(blocker / "answers.db")  # a folder that cannot exist
    log.record("a", "m", "1", "OK", 0.001, None)
    assert await log.flush() == 0
    assert log.failed == 1
    await log.stop()


async def test_stop_writes_what_is_left(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path / "answers.db", interval_s=60)
    log.start()
    log.record("a", "m", "1", "OK", 0.001, None)
    await asyncio.wait_for(log.stop(), 5)
    assert log.written == 1


def test_probe_09_answers_of_no_served_model_are_not_recorded(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path / "answers.db")
    for i in range(50):  # made-up names: each would have had a 1M-row cap of its own
        log.record(str(i), f"nosuch{i}", "", "NOT_FOUND", 0.001, None)
    log.record("ok", "m", "1", "OK", 0.001, None)
    assert (log.pending(), log.dropped) == (1, 0)


def test_probe_09_answers_are_capped_in_all_oldest_first(tmp_path: Path) -> None:
    with AnswerStore(tmp_path / "answers.db", max_answers=100) as store:
        for batch in range(5):  # 300 answers over three models, in batches of 60
            store.write([(f"m{i % 3}", f"r{batch}-{i}", "1", "OK", float(batch * 60 + i),
                          0.001, None, None) for i in range(60)])
        count, oldest = store.conn.execute("SELECT COUNT(*), MIN(at) FROM answers").fetchone()
        assert count == 100 and oldest == 200.0


def test_probe_09_feedback_is_capped_per_caller_and_refused_past_the_total(
        tmp_path: Path) -> None:
    with AnswerStore(tmp_path / "answers.db", per_caller=10, max_feedback=25) as store:
        for call in range(3):
            store.add_feedback("m", [(f"a{call}-{i}", 1.0) for i in range(8)], float(call), "a")
        kept = store.conn.execute("SELECT request_id FROM feedback WHERE subject = 'a' "
                                  "ORDER BY request_id").fetchall()
        assert [r[0] for r in kept] == [f"a1-{i}" for i in range(6, 8)] + [
            f"a2-{i}" for i in range(8)]
        store.add_feedback("m", [(f"b{i}", 1.0) for i in range(10)], 5.0, "b")
        with pytest.raises(FeedbackFull):
            store.add_feedback("m", [(f"c{i}", 1.0) for i in range(6)], 6.0, "c")
        assert store.conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 20
