"""The respond stage: one request's output slices encoded as a ModelInferResponse."""

from __future__ import annotations

from typing import Any

from common.proto import grpc_service_pb2 as pb
from runtime.classify import top_k
from runtime.executor import Output
from runtime.model import ServedModel


def select(model: ServedModel, outputs: list[Output], requested: tuple[str, ...],
           classes: dict[str, int] | None = None) -> list[Output]:
    """The outputs a request asked for (all when it named none), as classes where it asked."""
    chosen = []
    for out in outputs:
        if requested and out.name not in requested:
            continue
        if classes and out.name in classes:
            out = top_k(out, classes[out.name], model.labels.get(out.name), model.batched)
        chosen.append(out)
    return chosen


def build_response(request: Any, model: ServedModel, outputs: list[Output],
                   with_raw: bool = True) -> pb.ModelInferResponse:
    """Without ``with_raw``, the tensors' bytes are left for the caller to send another way."""
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=str(model.version), id=request.id
    )
    add, raws = response.outputs.add, response.raw_output_contents
    for out in outputs:
        add(name=out.name, datatype=out.datatype, shape=out.shape)
        if with_raw:
            raw = out.raw
            raws.append(raw if type(raw) is bytes else bytes(raw))
    return response
