"""The feedback API's core, for every transport: parse `{"id", "truth"}` items, store them.

`POST /v2/models/{m}/feedback` (HTTP) and the gRPC feedback method both call `post_feedback`.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

import grpc
import orjson

from common.errors import TensorgateError, invalid_argument, unavailable
from gateway.answers import AnswerLog

#: Items per call, and the longest request id accepted (ids are the callers' or ours, ~20 bytes).
MAX_ITEMS = 10_000
MAX_ID_CHARS = 256
_SHAPE = 'expected {"id": "<request id>", "truth": <number>} or {"feedback": [...]}'


def _truth(value: Any, where: str) -> float:
    # NOTE: bool is an int in Python; `true` is no class label or measurement.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid_argument(f"{where}: truth must be a number (a class index or a value), "
                               f"got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise invalid_argument(f"{where}: truth must be a finite number, got {value!r}")
    return number


def _item(entry: Any, where: str) -> tuple[str, float]:
    if not isinstance(entry, dict) or "id" not in entry or "truth" not in entry:
        raise invalid_argument(f"{where}: {_SHAPE}")
    request_id = entry["id"]
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_CHARS:
        raise invalid_argument(f"{where}: id must be a non-empty string of at most "
                               f"{MAX_ID_CHARS} characters, got {request_id!r}")
    return request_id, _truth(entry["truth"], where)


def parse_items(document: Any, model: str) -> list[tuple[str, float]]:
    """The (request id, truth) pairs of a decoded feedback body; INVALID_ARGUMENT if malformed."""
    where = f"feedback for model '{model}'"
    if isinstance(document, dict) and "feedback" in document:
        entries = document["feedback"]
        if not isinstance(entries, list) or not entries:
            raise invalid_argument(f"{where}: 'feedback' must be a non-empty list")
        if len(entries) > MAX_ITEMS:
            raise invalid_argument(f"{where}: {len(entries)} items, at most {MAX_ITEMS} a call")
        return [_item(entry, f"{where}, item {i}") for i, entry in enumerate(entries)]
    return [_item(document, where)]


def parse_feedback(body: bytes, model: str) -> list[tuple[str, float]]:
    """Decode a JSON feedback body (one item or {"feedback": [...]}) into pairs."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_argument(f"feedback for model '{model}' is not valid JSON: {exc}") from None
    return parse_items(document, model)


async def post_feedback(answers: AnswerLog | None, model: str, body: bytes) -> dict[str, int]:
    """The whole API call after auth: `{"recorded": n, "unmatched": k}`.

    Unmatched ids are stored all the same: their answer may still be in a buffer, and the
    report joins truth and answers when it runs. No answer log: FAILED_PRECONDITION.
    """
    if answers is None:
        raise TensorgateError(grpc.StatusCode.FAILED_PRECONDITION,
                              "feedback is off: this gateway has no registry, so it records "
                              "no answers to join feedback with")
    items = parse_feedback(body, model)
    try:
        recorded, unmatched = await answers.feedback_many(model, items)
    except (sqlite3.Error, OSError) as exc:
        raise unavailable(f"feedback for model '{model}' could not be stored: {exc}") from None
    return {"recorded": recorded, "unmatched": unmatched}


def encode_result(result: dict[str, int]) -> bytes:
    """The answer's body, the same for HTTP and gRPC."""
    return orjson.dumps(result)
