"""The `tensorgate edge` command: `export` a served version to a bundle, `run` and `bench` one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tensorgate.edge import runner
from tensorgate.edge.source import TARGETS

#: The top-level commands this module answers; cli.py hands them to `run`.
COMMANDS = ("edge",)


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
        return value
    return parse


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `edge export | run | bench` to the `tensorgate` command's subparsers."""
    edge = commands.add_parser("edge", help="export a model version to an edge bundle; run one")
    edge_commands = edge.add_subparsers(dest="edge_command", required=True)
    export = edge_commands.add_parser(
        "export", help="convert, verify against the served version, and write a bundle")
    export.add_argument("model", metavar="MODEL[:VERSION]", help="the newest version if omitted")
    export.add_argument("--target", required=True, choices=TARGETS,
                        help="onnx (float32) | onnx-fp16 | onnx-int8 (static with "
                             "--calibration, else dynamic) | ort (mobile format + operator list)")
    export.add_argument("--out", required=True, type=Path, metavar="PATH",
                        help="the bundle: PATH.tar.gz for an archive, else a directory")
    export.add_argument("--calibration", type=Path, metavar="FILE.npz",
                        help="sample inputs (named after the inputs, or x): static int8 "
                             "calibration, and verification when --eval is not given")
    export.add_argument("--eval", type=Path, metavar="FILE.npz",
                        help="labelled inputs (inputs + labels): verify on them and report "
                             "accuracy before and after")
    export.add_argument("--samples", type=_positive(int), default=256,
                        help="inputs generated from the signature when no file is given (256)")
    export.add_argument("--max-abs-err", type=_positive(float), metavar="X",
                        help="fail above this max absolute output error (per-target default)")
    export.add_argument("--min-agreement", type=_positive(float), metavar="Y",
                        help="fail below this top-1 agreement, 0..1 (per-target default)")
    export.add_argument("--max-accuracy-drop", type=_positive(float), metavar="POINTS",
                        help="with --eval, fail when accuracy falls more than this many points")
    export.add_argument("--fp16-io", action="store_true",
                        help="onnx-fp16: make inputs and outputs float16 too (default float32)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset for torch models (17)")
    export.add_argument("--sign-key", type=Path, metavar="PEM",
                        help="sign manifest.json with this Ed25519 private key")
    export.add_argument("--force", action="store_true", help="replace an existing --out")
    export.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: on a terminal)")
    export.add_argument("--model-repository", type=Path, default=Path("models"),
                        help="the model repository (./models)")
    export.add_argument("--registry", type=Path, metavar="PATH",
                        help="the registry whose audit log records the export (tensorgate.db "
                             "beside the model repository)")
    run = edge_commands.add_parser("run", help="run a bundle on an input file (onnxruntime only)")
    bench = edge_commands.add_parser("bench", help="time a bundle (onnxruntime only)")
    runner.add_arguments(run, bench, None)


def run(args: argparse.Namespace) -> int:
    """Run one `edge` command; a refused export or bundle prints why and returns 1."""
    if args.edge_command in ("run", "bench"):
        return runner.command(args, args.edge_command)
    return _export(args)


def _export(args: argparse.Namespace) -> int:
    # NOTE: deferred: `edge run` and `edge bench` must not pay for torch and the exporters.
    from common.registry import RegistryError, default_registry_path
    from tensorgate.admin import actor
    from tensorgate.edge.pipeline import ExportOptions, export_bundle, record
    from tensorgate.edge.source import EdgeError, find_source, parse_ref

    registry = args.registry or default_registry_path(args.model_repository)
    options = ExportOptions(
        target=args.target, calibration=args.calibration, eval=args.eval, samples=args.samples,
        max_abs_err=args.max_abs_err, min_agreement=args.min_agreement,
        max_accuracy_drop=args.max_accuracy_drop, opset=args.opset, fp16_io=args.fp16_io,
        sign_key=args.sign_key, progress=args.progress)
    try:
        source = find_source(args.model_repository, *parse_ref(args.model))
    except EdgeError as exc:
        print(f"tensorgate edge: {exc.message}", file=sys.stderr)
        return 1
    manifest, error = None, None
    try:
        path, manifest = export_bundle(source, options, args.out, replace=args.force)
        print(summary(manifest, path))
    except EdgeError as exc:
        error = exc.message
        print(f"tensorgate edge: {error}", file=sys.stderr)
    try:
        record(registry, actor(), source, args.target, args.out.resolve(), manifest, error)
    except RegistryError as exc:
        print(f"tensorgate edge: the export was not recorded in the audit log: {exc}",
              file=sys.stderr)
        return 1
    return 1 if error else 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def summary(manifest: dict[str, Any], path: Path) -> str:
    """What the export printed: the verification, size and latency figures, and the bundle."""
    v, size, latency = manifest["verification"], manifest["size"], manifest["latency_ms"]
    source = manifest["source"]
    lines = [
        f"{manifest['name']}:{source['version']} ({source['backend']}, sha256 "
        f"{source['sha256'][:12]}…) → {manifest['target']} ({manifest['model_file']}, "
        f"opset {manifest['opset']})",
        f"  verified on {v['samples']} samples ({v['inputs_from']}): max abs err "
        f"{v['max_abs_err']:.3g}, mean abs err {v['mean_abs_err']:.3g}, top-1 agreement "
        f"{_percent(v['top1_agreement'])}",
    ]
    if v["accuracy_before"] is not None:
        lines.append(f"  accuracy: served {_percent(v['accuracy_before'])} → exported "
                     f"{_percent(v['accuracy_after'])}")
    lines += [
        f"  size: {size['before_bytes']:,} B served, {size['fp32_onnx_bytes']:,} B as fp32 ONNX "
        f"→ {size['after_bytes']:,} B ({size['after_bytes'] / size['fp32_onnx_bytes']:.0%} of "
        "fp32 ONNX)",
        f"  latency, batch 1, 1 thread, p50 on this machine: {latency['before_p50']:.3f} ms "
        f"served → {latency['after_p50']:.3f} ms exported",
        f"wrote {path}",
    ]
    return "\n".join(lines)
