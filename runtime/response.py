"""The respond stage: one request's output slices encoded as a ModelInferResponse."""

from __future__ import annotations

from typing import Any

from common.proto import grpc_service_pb2 as pb
from runtime.classify import top_k
from runtime.executor import Output
from runtime.model import ServedModel


def build_response(
    request: Any, model: ServedModel, outputs: list[Output], requested: tuple[str, ...],
    classes: dict[str, int] | None = None,
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=str(model.version), id=request.id
    )
    for out in outputs:
        if requested and out.name not in requested:
            continue
        if classes and out.name in classes:
            out = top_k(out, classes[out.name], model.labels.get(out.name), model.batched)
        response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        response.raw_output_contents.append(out.raw)
    return response
