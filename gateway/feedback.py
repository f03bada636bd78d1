"""The feedback API's core, for every transport: check the caller and model, parse `{"id",
"truth"}` items, store them. `POST /v2/models/{m}/feedback` and gRPC both call `handle_feedback`.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import orjson

from common.errors import TensorgateError, invalid_argument, unavailable
from common.names import check_name, shown
from common.proto import grpc_service_pb2 as pb
from gateway.answer_store import FeedbackFull
from gateway.answers import AnswerLog

if TYPE_CHECKING:
    from gateway.pipeline import Headers, Pipeline

#: Items per call, and the longest request id accepted (ids are the callers' or ours, ~20 bytes).
MAX_ITEMS = 1_000
MAX_ID_CHARS = 128
#: Request ids are printable ASCII without spaces: uuids, ours, or a caller's own scheme.
_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_ID_CHARS}}}")
#: When feedback is full, the wait suggested: rows go as their answers are pruned.
FULL_RETRY_AFTER_S = 60.0
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
    if not isinstance(request_id, str) or _ID.fullmatch(request_id) is None:
        raise invalid_argument(f"{where}: id must be a non-empty string of at most "
                               f"{MAX_ID_CHARS} printable ASCII characters without spaces, "
                               f"got {shown(request_id)}")
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


async def handle_feedback(pipeline: Pipeline, headers: Headers, model: str,
                          body: bytes | Callable[[], Awaitable[bytes]]) -> dict[str, int]:
    """The whole API call: the caller may use the model (PERMISSION_DENIED), a worker serves
    it (NOT_FOUND), then `post_feedback`. The body (or its reader) is not read before both
    pass."""
    check_name(model)
    principal = pipeline.admit(headers, model)
    if model not in pipeline.snapshot().ready:
        # NOTE: a model served from a repository the registry does not list: ask a worker.
        request = pb.ModelMetadataRequest(name=model).SerializeToString()
        await pipeline.ask("ModelMetadata", request, model, access="open")
    data = body if isinstance(body, bytes) else await body()
    return await post_feedback(pipeline.answers, model, data, principal.subject)


async def post_feedback(answers: AnswerLog | None, model: str, body: bytes, subject: str = ""
                        ) -> dict[str, int]:
    """Parse and store: `{"recorded": n, "unmatched": k}`.

    Unmatched ids are stored all the same: their answer may still be in a buffer, and the
    report joins truth and answers when it runs. No answer log: FAILED_PRECONDITION. The
    store full: RESOURCE_EXHAUSTED with a retry-after.
    """
    if answers is None:
        raise TensorgateError(grpc.StatusCode.FAILED_PRECONDITION,
                              "feedback is off: this gateway has no registry, so it records "
                              "no answers to join feedback with")
    items = parse_feedback(body, model)
    try:
        recorded, unmatched = await answers.feedback_many(model, items, subject)
    except FeedbackFull as exc:
        raise TensorgateError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"feedback for model '{model}' not stored: {exc}; try again later",
                              retry_after=FULL_RETRY_AFTER_S) from None
    except (sqlite3.Error, OSError) as exc:
        raise unavailable(f"feedback for model '{model}' could not be stored: {exc}") from None
    return {"recorded": recorded, "unmatched": unmatched}


def encode_result(result: dict[str, int]) -> bytes:
    """The answer's body, the same for HTTP and gRPC."""
    return orjson.dumps(result)
