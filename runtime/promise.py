"""A queued request's outcome handed straight to one callback, for a caller with no task to wake.

The lane answers a request from its outcome's callback; an asyncio future would run that callback
a loop turn later, through a handle of its own per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tensorgate.runtime")


class Promise:
    """The part of asyncio.Future the scheduler, batcher and lane use (done, result, exception,
    set_result, set_exception, cancel, add_done_callback) for one callback, called at once when
    the outcome is set: inside the batch's completion, so answers finished together leave
    together."""

    __slots__ = ("_callback", "_cancelled", "_done", "_error", "_result")

    def __init__(self) -> None:
        self._callback: Callable[[Promise], None] | None = None
        self._done = self._cancelled = False
        self._result: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return self._cancelled

    def result(self) -> Any:
        if not self._done:
            raise asyncio.InvalidStateError("result is not set")
        if self._error is not None:
            raise self._error
        return self._result

    def exception(self) -> BaseException | None:
        """As asyncio.Future's: raises CancelledError for a cancelled one."""
        if not self._done:
            raise asyncio.InvalidStateError("exception is not set")
        if self._cancelled:
            raise asyncio.CancelledError()
        return self._error

    def add_done_callback(self, callback: Callable[[Promise], None]) -> None:
        """The one callback; called at once when the outcome is set already."""
        if self._callback is not None:
            raise asyncio.InvalidStateError("a Promise takes one callback")
        self._callback = callback
        if self._done:
            self._fire()

    def set_result(self, result: Any) -> None:
        self._settle()
        self._result = result
        self._fire()

    def set_exception(self, error: BaseException) -> None:
        self._settle()
        self._error = error
        self._fire()

    def cancel(self) -> bool:
        if self._done:
            return False
        self._settle()
        self._cancelled = True
        self._error = asyncio.CancelledError()
        self._fire()
        return True

    def _settle(self) -> None:
        if self._done:
            raise asyncio.InvalidStateError("the outcome is already set")
        self._done = True

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is None:
            return
        try:
            callback(self)
        except Exception:  # NOTE: one caller's answer failing never stops its batch's others
            log.exception("answering a request failed")
