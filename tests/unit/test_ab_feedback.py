"""The feedback API's core: bodies parsed strictly, truth stored, unknown ids reported."""

from __future__ import annotations

from pathlib import Path

import grpc
import orjson
import pytest

from common.errors import TensorgateError
from gateway.answer_store import AnswerStore
from gateway.answers import AnswerLog
from gateway.feedback import MAX_ITEMS, encode_result, parse_feedback, post_feedback


def test_one_item_and_many() -> None:
    assert parse_feedback(b'{"id": "a", "truth": 3}', "m") == [("a", 3.0)]
    body = orjson.dumps({"feedback": [{"id": "a", "truth": 1}, {"id": "b", "truth": 2.5}]})
    assert parse_feedback(body, "m") == [("a", 1.0), ("b", 2.5)]


@pytest.mark.parametrize(("body", "words"), [
    (b"{", "not valid JSON"),
    (b"[]", "expected"),
    (b'{"id": "a"}', "expected"),
    (b'{"id": "", "truth": 1}', "non-empty string"),
    (b'{"id": 7, "truth": 1}', "non-empty string"),
    (orjson.dumps({"id": "x" * 129, "truth": 1}), "at most 128"),
    (b'{"id": "a", "truth": "cat"}', "must be a number"),
    (b'{"id": "a", "truth": true}', "must be a number"),
    (b'{"id": "a", "truth": null}', "must be a number"),
    (b'{"feedback": []}', "non-empty list"),
    (b'{"feedback": {"id": "a"}}', "non-empty list"),
    (b'{"feedback": [{"id": "a", "truth": 1}, 5]}', "item 1"),
    (b'{"id": "a", "truth": 1e400}', "not valid JSON"),  # orjson refuses infinities itself
])
def test_malformed_bodies_are_invalid_arguments(body: bytes, words: str) -> None:
    with pytest.raises(TensorgateError) as caught:
        parse_feedback(body, "digits")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.message
    assert "digits" in caught.value.message


def test_too_many_items_in_one_call() -> None:
    body = orjson.dumps({"feedback": [{"id": str(i), "truth": 0} for i in range(MAX_ITEMS + 1)]})
    with pytest.raises(TensorgateError, match="at most"):
        parse_feedback(body, "m")


async def test_post_reports_recorded_and_unmatched(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path / "answers.db")
    log.record("known", "m", "1", "OK", 0.001, None)
    body = orjson.dumps({"feedback": [{"id": "known", "truth": 1}, {"id": "later", "truth": 2}]})
    result = await post_feedback(log, "m", body)
    assert result == {"recorded": 2, "unmatched": 1}
    assert orjson.loads(encode_result(result)) == result
    # The unmatched truth is kept: its answer joins when it is written.
    log.record("later", "m", "2", "OK", 0.001, None)
    await log.flush()
    await log.stop()
    with AnswerStore(tmp_path / "answers.db") as store:
        rows = store.conn.execute("SELECT request_id, truth FROM feedback ORDER BY 1").fetchall()
        assert rows == [("known", 1.0), ("later", 2.0)]
        assert store.labelled("m", 0) == []  # no prediction in either answer (None bytes)


async def test_feedback_is_per_model(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path / "answers.db")
    log.record("a", "m", "1", "OK", 0.001, None)
    assert await post_feedback(log, "other", b'{"id": "a", "truth": 1}') == {
        "recorded": 1, "unmatched": 1}
    await log.stop()


async def test_without_an_answer_log_feedback_is_unimplemented() -> None:
    with pytest.raises(TensorgateError) as caught:
        await post_feedback(None, "m", b'{"id": "a", "truth": 1}')
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION

