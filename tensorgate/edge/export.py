"""Stage one of an edge export: the served version as ONNX, optimised offline by ONNX Runtime."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import grpc
import onnx
import onnxruntime as ort

from tensorgate.edge.source import EdgeError, Source

DEFAULT_OPSET = 17


def to_onnx(source: Source, out: Path, opset: int = DEFAULT_OPSET) -> Path:
    """The source as ONNX at `out`: ONNX is copied, TorchScript converted keeping a batch axis."""
    if source.backend == "onnx":
        shutil.copyfile(source.artifact, out)
        return out
    return _torchscript_to_onnx(source, out, opset)


def _torchscript_to_onnx(source: Source, out: Path, opset: int) -> Path:
    import torch  # NOTE: deferred: ONNX sources and `edge run` never pay torch's import time

    config = source.config
    if config.inputs is None or config.outputs is None:
        raise EdgeError(f"{config.source}: 'inputs' and 'outputs' are required to export a "
                        "TorchScript model (it does not describe its own signature)")
    batched = config.max_batch_size > 0
    example, axes = [], {}
    for spec in config.inputs:
        dims = [max(d, 1) for d in spec.shape]
        # NOTE: batch 2, not 1: with 1 the exporter may fold the batch axis into a constant.
        example.append(torch.zeros([2, *dims] if batched else dims))
        axes[spec.name] = _dynamic_axes(spec.shape, batched)
    for spec in config.outputs:
        axes[spec.name] = _dynamic_axes(spec.shape, batched)
    with warnings.catch_warnings():
        # NOTE: ScriptModules need the TorchScript-based exporter; torch.export cannot trace them.
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(source.artifact), map_location="cpu")
        module.eval()
        try:
            torch.onnx.export(module, tuple(example), str(out), dynamo=False,
                              input_names=[s.name for s in config.inputs],
                              output_names=[s.name for s in config.outputs],
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
        except Exception as exc:  # torch raises many types; the user needs the reason
            raise EdgeError(f"cannot convert {source.artifact} to ONNX (opset {opset}): {exc}",
                            grpc.StatusCode.FAILED_PRECONDITION) from None
    return out


def _dynamic_axes(shape: tuple[int, ...], batched: bool) -> dict[int, str]:
    offset = 1 if batched else 0
    axes = {i + offset: f"dim{i + offset}" for i, d in enumerate(shape) if d < 0}
    return {0: "N", **axes} if batched else axes


def optimise(src: Path, dst: Path, ort_format: bool = False) -> Path:
    """ONNX Runtime's basic offline graph optimisations, saved as ONNX or as the ORT format."""
    options = ort.SessionOptions()
    # NOTE: basic only: the extended levels write fused operators specific to this machine's
    # execution provider, and the bundle must load on any device.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    if ort_format:
        options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst


def opset_of(path: Path) -> int:
    """The default-domain opset an ONNX file declares."""
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
