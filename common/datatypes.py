"""OIP tensor datatypes: their numpy dtypes, element sizes and the ONNX / Triton names for them."""

from __future__ import annotations

import numpy as np

# Little-endian always: the wire layout of raw tensors is little-endian, row-major.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# BF16 travels as raw bytes only; numpy has no native type for it.
ELEMENT_SIZE: dict[str, int] = {
    name: dt.itemsize for name, dt in NUMPY_DTYPES.items() if name != "BYTES"
} | {"BF16": 2}

ALL_DATATYPES = (*NUMPY_DTYPES, "BF16")

ONNX_TO_OIP: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}

# model_config.proto's DataType enum names, as ModelConfig reports them.
OIP_TO_CONFIG: dict[str, str] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
    "BF16": "TYPE_BF16",
}


def from_numpy(dtype: np.dtype) -> str:
    """The OIP name of a numpy dtype."""
    if dtype.kind in "OUS":
        return "BYTES"
    little = dtype.newbyteorder("<")
    for name, candidate in NUMPY_DTYPES.items():
        if candidate == little:
            return name
    raise ValueError(f"no OIP datatype for numpy dtype {dtype}")
