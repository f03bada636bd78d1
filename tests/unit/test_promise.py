"""The lane's request outcome: its one callback runs at once, as the outcome is set, and it
answers as an asyncio future would (result, exception, cancel)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from runtime.promise import Promise


def test_the_callback_runs_at_once_with_the_result() -> None:
    seen: list[object] = []
    promise = Promise()
    promise.add_done_callback(lambda p: seen.append(p.result()))
    assert not promise.done() and seen == []
    promise.set_result([1, 2])
    assert promise.done() and not promise.cancelled() and seen == [[1, 2]]
    assert promise.exception() is None
    with pytest.raises(asyncio.InvalidStateError):
        promise.set_result(3)  # an outcome is set once
    assert seen == [[1, 2]]


def test_an_error_is_raised_by_result_and_given_by_exception() -> None:
    promise = Promise()
    error = ValueError("bad batch")
    promise.set_exception(error)
    assert promise.exception() is error
    with pytest.raises(ValueError, match="bad batch"):
        promise.result()


def test_cancel_calls_back_once_and_raises_cancelled_as_a_future_does() -> None:
    calls: list[Promise] = []
    promise = Promise()
    promise.add_done_callback(calls.append)
    assert promise.cancel() and promise.cancelled() and calls == [promise]
    assert not promise.cancel() and calls == [promise]  # called back once
    for read in (promise.result, promise.exception):
        with pytest.raises(asyncio.CancelledError):
            read()
    assert not Promise().done()
    with pytest.raises(asyncio.InvalidStateError):
        Promise().result()


def test_a_callback_added_after_the_outcome_runs_at_once_and_only_one_is_taken() -> None:
    promise = Promise()
    promise.set_result(7)
    seen: list[int] = []
    promise.add_done_callback(lambda p: seen.append(p.result()))
    assert seen == [7]
    other = Promise()
    other.add_done_callback(lambda p: None)
    with pytest.raises(asyncio.InvalidStateError, match="one callback"):
        other.add_done_callback(lambda p: None)


def test_a_failing_callback_is_logged_and_does_not_reach_whoever_set_the_outcome(
        caplog: pytest.LogCaptureFixture) -> None:
    promise = Promise()

    def broken(_: Promise) -> None:
        raise RuntimeError("answer failed")

    promise.add_done_callback(broken)
    with caplog.at_level(logging.ERROR, logger="tensorgate.runtime"):
        promise.set_result(1)  # NOTE: the batch's other requests are answered after this one
    assert "answering a request failed" in caplog.text and "answer failed" in caplog.text
