"""The repository index of several runtime workers merged into one, as one Triton would list it:
a model version READY on any worker is READY."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from common.errors import TensorgateError, unavailable
from common.proto import grpc_service_pb2 as pb
from gateway.route import Endpoint

#: The better of two states a model version has on different workers.
_RANK = {"READY": 0, "LOADING": 1, "UNLOADING": 2, "UNAVAILABLE": 3}


async def gather(endpoints: Sequence[Endpoint], request: bytes, timeout: float) -> bytes:
    """Every worker's index, merged; a worker that does not answer is left out, unless none
    answers."""
    answers = await asyncio.gather(
        *(e.upstream.call("RepositoryIndex", request, timeout) for e in endpoints),
        return_exceptions=True)
    found = [a for a in answers if isinstance(a, bytes)]
    if not found:
        first = next(a for a in answers if isinstance(a, BaseException))
        raise first if isinstance(first, TensorgateError) else unavailable(
            f"the repository index: no runtime worker answered ({type(first).__name__})")
    return merge(found).SerializeToString()


def merge(answers: Sequence[bytes]) -> pb.RepositoryIndexResponse:
    """One row per (model, version), in its best state; a row without a version (a model not
    loaded) only for a model no worker serves."""
    best: dict[tuple[str, str], pb.RepositoryIndexResponse.ModelIndex] = {}
    for answer in answers:
        for row in pb.RepositoryIndexResponse.FromString(answer).models:
            key = (row.name, row.version)
            kept = best.get(key)
            if kept is None or _RANK.get(row.state, 9) < _RANK.get(kept.state, 9):
                best[key] = row
    served = {name for (name, version), row in best.items()
              if version and row.state in ("READY", "LOADING")}
    merged = pb.RepositoryIndexResponse()
    for (name, version), row in sorted(best.items(), key=lambda item: _order(*item[0])):
        if version or name not in served:
            merged.models.append(row)
    return merged


def _order(name: str, version: str) -> tuple[str, int]:
    return name, int(version) if version.isdecimal() else 0
