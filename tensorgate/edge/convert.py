"""Stage two of an edge export: precision (float16, int8 dynamic or static) and the ORT format."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.tools.ort_format_model import create_config_from_models
from onnxruntime.transformers.float16 import convert_float_to_float16

from tensorgate.edge.export import optimise

CALIBRATION_BATCH = 32


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # NOTE: onnxruntime.quantization logs advice through the root logger on every call; the
    # export prints its own summary, so those lines are noise to a CLI user.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def to_fp16(src: Path, dst: Path, keep_io_types: bool = True) -> Path:
    """Weights and compute in float16; inputs and outputs stay float32 when `keep_io_types`."""
    model = onnx.load(str(src))
    # NOTE: the converter's own block list keeps ops that lose range in float16 (e.g. Range,
    # Resize's scales) in float32, with casts around them.
    converted = convert_float_to_float16(model, keep_io_types=keep_io_types)
    onnx.save(converted, str(dst))
    return dst


class _Batches(CalibrationDataReader):  # type: ignore[misc]
    """Feeds the calibration samples to the calibrator a batch at a time."""

    def __init__(self, samples: dict[str, np.ndarray]) -> None:
        count = len(next(iter(samples.values())))
        self._batches = iter([
            {name: array[i:i + CALIBRATION_BATCH] for name, array in samples.items()}
            for i in range(0, count, CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def to_int8(src: Path, dst: Path, calibration: dict[str, np.ndarray] | None) -> str:
    """int8 weights: static (QDQ, activations too) with calibration samples, else dynamic.

    Returns the mode used, "static" or "dynamic", for the manifest.
    """
    with _quiet_root_logger():
        if calibration is None:
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
            return "dynamic"
        quantize_static(str(src), str(dst), _Batches(calibration), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=False)
    return "static"


def to_ort(src: Path, dst: Path, operators: Path) -> tuple[Path, Path]:
    """The ORT format for mobile builds, and the operator list a reduced build must include."""
    optimise(src, dst, ort_format=True)
    # NOTE: the tool's logger announces every file it writes at INFO; this one is ours to report.
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    with _quiet_root_logger():
        create_config_from_models([dst], operators, enable_type_reduction=False)
    # NOTE: the generated header names this machine's path; keep only the model's file name.
    lines = operators.read_text().splitlines()
    kept = [f"# - {dst.name}" if line.startswith("# - ") else line for line in lines]
    operators.write_text("\n".join(kept) + "\n")
    return dst, operators


def scratch() -> tempfile.TemporaryDirectory[str]:
    """A private working directory for one export's intermediate files."""
    return tempfile.TemporaryDirectory(prefix="tensorgate-edge-")
