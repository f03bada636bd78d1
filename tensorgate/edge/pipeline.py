"""An edge export in order: source → ONNX → optimise → convert → verify → time → sealed bundle.

Nothing is written unless verification passes; the audit record is the caller's (see `record`).
"""

from __future__ import annotations

import getpass
import json
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import onnxruntime as ort
from tqdm import tqdm

from common.datatypes import ONNX_TO_OIP
from common.registry import Registry
from tensorgate.edge import bundle, convert, export, runner, samples, verify
from tensorgate.edge.source import TARGETS, EdgeError, Source, load_served


@dataclass(frozen=True)
class ExportOptions:
    """What `tensorgate edge export` was asked; None thresholds take the target's defaults."""

    target: str
    calibration: Path | None = None
    eval: Path | None = None
    samples: int = 256
    max_abs_err: float | None = None
    min_agreement: float | None = None
    max_accuracy_drop: float | None = None
    opset: int = export.DEFAULT_OPSET
    fp16_io: bool = False
    sign_key: Path | None = None
    latency_iterations: int = 50
    progress: bool | None = None  # None: bars only on a terminal

    def thresholds(self) -> verify.Thresholds:
        if self.target not in TARGETS:
            raise EdgeError(f"unknown target {self.target!r}; expected one of {', '.join(TARGETS)}")
        err, agreement = verify.DEFAULT_THRESHOLDS[self.target]
        return verify.Thresholds(
            err if self.max_abs_err is None else self.max_abs_err,
            agreement if self.min_agreement is None else self.min_agreement,
            self.max_accuracy_drop)


@dataclass
class Converted:
    """The target's model file (and any companion files) with how they were made."""

    model_file: str
    files: dict[str, bytes]
    fp32_bytes: int
    conversion: dict[str, Any] = field(default_factory=dict)


def _convert(source: Source, options: ExportOptions, work: Path,
             calibration: samples.SampleSet | None) -> Converted:
    onnx_file = export.to_onnx(source, work / "source.onnx", options.opset)
    fp32 = export.optimise(onnx_file, work / "fp32.onnx")
    notes: dict[str, Any] = {"graph_optimization": "onnxruntime basic (offline)",
                             "opset": export.opset_of(onnx_file)}
    if options.target == "ort":
        model, operators = convert.to_ort(onnx_file, work / "model.ort",
                                          work / "required_operators.config")
        return Converted("model.ort", {"model.ort": model.read_bytes(),
                                       operators.name: operators.read_bytes()},
                         fp32.stat().st_size, {**notes, "required_operators": operators.name})
    if options.target == "onnx-fp16":
        fp32 = convert.to_fp16(fp32, work / "fp16.onnx", keep_io_types=not options.fp16_io)
        notes["precision"] = "float16 weights and compute; inputs and outputs " + (
            "float16" if options.fp16_io else "float32")
    elif options.target == "onnx-int8":
        given = None if calibration is None else calibration.inputs
        mode = convert.to_int8(work / "fp32.onnx", work / "int8.onnx", given)
        fp32 = work / "int8.onnx"
        notes["quantization"] = {"mode": mode, "weights": "int8", "format":
                                 "QDQ, per tensor" if mode == "static" else "dynamic (QOperator)",
                                 "calibration_samples": 0 if calibration is None else
                                 calibration.count}
    return Converted("model.onnx", {"model.onnx": fp32.read_bytes()},
                     (work / "fp32.onnx").stat().st_size, notes)


def _signature(args: list[Any]) -> list[dict[str, Any]]:
    return [{"name": a.name, "datatype": ONNX_TO_OIP.get(a.type, a.type),
             "shape": [d if isinstance(d, int) and d > 0 else -1 for d in a.shape]} for a in args]


def _created_by() -> dict[str, str]:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    try:
        tool = f"tensorgate {metadata.version('tensorgate')}"
    except metadata.PackageNotFoundError:
        tool = "tensorgate"
    return {"tool": tool, "user": user, "host": platform.node()}


def _manifest(source: Source, options: ExportOptions, converted: Converted,
              session: ort.InferenceSession, figures: verify.Figures,
              latency: tuple[float, float]) -> dict[str, Any]:
    size_after = len(converted.files[converted.model_file])
    return {
        "format": bundle.FORMAT, "name": source.name, "target": options.target,
        "model_file": converted.model_file, "opset": converted.conversion["opset"],
        "source": {"version": source.version, "backend": source.backend,
                   "file": source.artifact.name, "sha256": source.sha256,
                   "size_bytes": source.artifact.stat().st_size},
        "max_batch_size": source.config.max_batch_size,
        "inputs": _signature(session.get_inputs()), "outputs": _signature(session.get_outputs()),
        "preprocessing": source.notes, "conversion": converted.conversion,
        "verification": {**figures.as_json(), "thresholds": options.thresholds().__dict__},
        "size": {"before_bytes": source.artifact.stat().st_size, "after_bytes": size_after,
                 "fp32_onnx_bytes": converted.fp32_bytes},
        "latency_ms": {"before_p50": round(latency[0], 4), "after_p50": round(latency[1], 4),
                       "batch": 1, "threads": 1, "iterations": options.latency_iterations,
                       "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
                                  + f", {os.cpu_count()} cores",
                       "onnxruntime": ort.__version__},
        "created_by": _created_by(),
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def export_bundle(source: Source, options: ExportOptions, out: Path,
                  replace: bool = False) -> tuple[Path, dict[str, Any]]:
    """Export, verify and write one bundle; raises EdgeError (nothing written) when it fails."""
    limits = options.thresholds()
    if Path(out).exists() and not replace:  # before the work, not after it
        raise EdgeError(f"{out} already exists; choose another --out or pass --force")
    key = bundle.load_signing_key(options.sign_key) if options.sign_key else None
    served = load_served(source)
    batched = source.config.max_batch_size > 0
    calibration = evaluation = None
    if options.calibration is not None:
        calibration = samples.load_npz(options.calibration, served.inputs, need_labels=False)
    if options.eval is not None:
        evaluation = samples.load_npz(options.eval, served.inputs, need_labels=True)
    checks = evaluation or calibration or samples.generate(served.inputs, options.samples)
    show = None if options.progress is None else not options.progress
    with tqdm(total=4, desc=f"export {source.ref} → {options.target}", disable=show,
              leave=False) as stages, convert.scratch() as work:
        stages.set_postfix_str("convert")
        converted = _convert(source, options, Path(work), calibration)
        stages.update()
        stages.set_postfix_str("verify")
        model = converted.files[converted.model_file]
        session = runner.load_session(model, converted.model_file.endswith(".ort"), threads=1)
        exported = verify.session_runner(session)
        before = verify.run_all(served.run, checks, batched, "served", options.progress)
        after = verify.run_all(exported, checks, batched, "exported", options.progress)
        figures = verify.compare(before, after, checks)
        verify.check(figures, limits, f"{source.ref} → {options.target}")
        stages.update()
        stages.set_postfix_str("time")
        latency = (verify.latency_p50_ms(served.run, checks, batched, options.latency_iterations),
                   verify.latency_p50_ms(exported, checks, batched, options.latency_iterations))
        stages.update()
        stages.set_postfix_str("write")
        sealed = bundle.seal(converted.files,
                             _manifest(source, options, converted, session, figures, latency), key)
        written = bundle.write(out, sealed, replace)
        stages.update()
    return written, json.loads(sealed[runner.MANIFEST])


def record(registry_path: Path, actor: str, source: Source, target: str, out: Path | str,
           manifest: dict[str, Any] | None, error: str | None = None) -> None:
    """One audit row per export attempt: what was exported to where, with its figures or error."""
    after: dict[str, Any] = {"target": target, "source_sha256": source.sha256, "out": str(out),
                             "status": "failed" if error else "ok"}
    if manifest is not None:
        after.update(verification=manifest["verification"], size=manifest["size"])
    if error:
        after["error"] = error
    with Registry(registry_path) as registry:
        registry.audit(actor, "edge.export", source.ref, None, after)
