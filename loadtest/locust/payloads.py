"""Request payloads generated from a model's metadata, so any served model is load-tested as is.

Built once per model and reused: the load generator spends its CPU on requests, not on encoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
         "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
         "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
         "BYTES": np.object_}


@dataclass(frozen=True)
class Spec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Payload:
    """One model's request, ready to send: JSON and binary HTTP bodies and gRPC inputs."""

    json_body: bytes
    binary_body: bytes
    #: The JSON header's length in the binary body (`Inference-Header-Content-Length`).
    binary_json_size: int
    grpc_inputs: list[Any]


def specs(metadata: dict) -> list[Spec]:
    """Inputs of `/v2/models/{m}` (or gRPC ModelMetadata as JSON, whose int64s are strings)."""
    return [Spec(i["name"], i["datatype"], tuple(int(d) for d in i["shape"]))
            for i in metadata["inputs"]]


def concrete(shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    """A runnable shape: a variable first dimension becomes `batch`, any other one becomes 1."""
    return tuple((batch if i == 0 else 1) if d < 0 else d for i, d in enumerate(shape))


def sample(spec: Spec, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = concrete(spec.shape, batch)
    if spec.datatype == "BYTES":
        return np.full(shape, b"tensorgate", dtype=np.object_)
    if spec.datatype == "BOOL":
        return rng.random(shape) < 0.5
    dtype = NUMPY[spec.datatype]
    if np.issubdtype(dtype, np.integer):
        # NOTE: small non-negative values: a valid index for embedding-style inputs.
        return rng.integers(0, 10, shape).astype(dtype)
    return rng.random(shape).astype(dtype)


def build(inputs: list[Spec], batch: int = 1, seed: int = 0) -> Payload:
    rng = np.random.default_rng(seed)
    arrays = [(spec, sample(spec, batch, rng)) for spec in inputs]
    body = {"inputs": [{"name": spec.name, "datatype": spec.datatype, "shape": list(a.shape),
                        "data": _json_data(a)} for spec, a in arrays]}
    http_inputs, grpc_inputs = [], []
    for spec, array in arrays:
        h = thttp.InferInput(spec.name, list(array.shape), spec.datatype)
        h.set_data_from_numpy(array, binary_data=True)
        http_inputs.append(h)
        g = tgrpc.InferInput(spec.name, list(array.shape), spec.datatype)
        g.set_data_from_numpy(array)
        grpc_inputs.append(g)
    binary, json_size = thttp.InferenceServerClient.generate_request_body(http_inputs)
    return Payload(json.dumps(body).encode(), binary, json_size or len(binary), grpc_inputs)


def _json_data(array: np.ndarray) -> list:
    flat = array.reshape(-1)
    if array.dtype == np.object_:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    return flat.tolist()
