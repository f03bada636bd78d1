"""The gateway's merge of several runtime workers' repository indexes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from common.errors import TensorgateError
from common.proto import grpc_service_pb2 as pb
from gateway.repository_index import gather, merge


def _index(*rows: tuple[str, str, str, str]) -> bytes:
    answer = pb.RepositoryIndexResponse()
    for name, version, state, reason in rows:
        answer.models.add(name=name, version=version, state=state, reason=reason)
    return answer.SerializeToString()


def _rows(answer: pb.RepositoryIndexResponse) -> list[tuple[str, str, str, str]]:
    return [(m.name, m.version, m.state, m.reason) for m in answer.models]


def test_ready_on_any_worker_is_ready() -> None:
    one = _index(("a", "1", "READY", ""), ("b", "1", "UNAVAILABLE", "unloaded"),
                 ("c", "", "UNAVAILABLE", "not loaded"))
    two = _index(("a", "1", "UNAVAILABLE", "unloaded"), ("a", "2", "READY", ""),
                 ("b", "1", "UNAVAILABLE", "unloaded"), ("c", "1", "READY", ""))
    assert _rows(merge([one, two])) == [
        ("a", "1", "READY", ""), ("a", "2", "READY", ""),
        ("b", "1", "UNAVAILABLE", "unloaded"), ("c", "1", "READY", "")]


def _endpoint(answer: Any) -> SimpleNamespace:
    async def call(method: str, request: bytes, timeout: float) -> bytes:
        assert method == "RepositoryIndex"
        if isinstance(answer, BaseException):
            raise answer
        return answer
    return SimpleNamespace(upstream=SimpleNamespace(call=call))


def test_a_silent_worker_is_left_out_unless_none_answers() -> None:
    down = TensorgateError(grpc.StatusCode.UNAVAILABLE, "worker down")
    answer = asyncio.run(gather([_endpoint(down), _endpoint(_index(("a", "1", "READY", "")))],
                                b"", 5.0))  # type: ignore[list-item]
    assert _rows(pb.RepositoryIndexResponse.FromString(answer)) == [("a", "1", "READY", "")]
    with pytest.raises(TensorgateError, match="worker down"):
        asyncio.run(gather([_endpoint(down), _endpoint(down)], b"", 5.0))  # type: ignore[list-item]
