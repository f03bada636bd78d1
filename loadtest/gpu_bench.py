"""The GPU benchmark (issue 3, target 6; issue 23): ResNet-50 on 224x224 images with fixed random
weights, in half precision on ONNX Runtime's CUDA provider or PyTorch (TorchScript); the same model
alone on the device and in-process against the runtime and the gateway path (bytes in the
request, or in system or CUDA shared memory) and do-nothing servers fed the same requests, in
one run:

    python -m loadtest.gpu_bench [--backend onnx|torch] [--precision fp16] [--workers 1x2,2x1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common.model_config import load_model_config
from loadtest import shm_rows, triton_perf
from loadtest.build_resnet import CLASSES, make_model, make_passthrough
from loadtest.cases import (
    ROOT,
    BatchPoint,
    Case,
    fill_requests,
    time_batch,
)
from loadtest.device_alone import device_alone
from loadtest.floor_rows import FLOOR_PATHS, against_floors, floor_rows
from loadtest.gpu_report import Row, render
from loadtest.gpu_rows import PATHS, SHM_PATHS, load_runs, measured, summary
from loadtest.machine import machine
from loadtest.servers import (
    Children,
    runtime_probe,
    start_gateway,
    start_runtime,
)
from tensorgate import mps

#: One model repository per benchmarked model, so a runtime loads only the one measured.
REPOS = ROOT / "loadtest" / ".models-gpu"
LOGS = REPOS / ".logs"
MODELS = {"resnet50": make_model, "passthrough": make_passthrough}
ARTIFACTS = {"onnx": "model.onnx", "torch": "model.pt"}
CONFIG = """\
# {model} on {size}x{size} images, {precision} (python -m loadtest.gpu_bench --model {model}).
backend: {backend}
optimization: {{cuda: {{graphs: {graphs}}}}}
max_batch_size: {max_batch}
dynamic_batching:
  max_queue_delay_microseconds: {delay_us}
  preferred_batch_size: [{max_batch}]
  max_queue_size: 8192
  default_timeout_microseconds: 0
instance_count: {instances}
device: {device}
inputs:
  - name: INPUT0
    datatype: {datatype}
    shape: [{width}]
outputs:
  - name: OUTPUT0
    datatype: {datatype}
    shape: [{classes}]
"""


def model_folder(opts: argparse.Namespace) -> Path:
    """``loadtest/.models-gpu/MODEL/MODEL`` (ONNX) or ``.../MODEL-torch/MODEL``: a repository
    per backend, so a runtime loads only the model measured."""
    suffix = "" if opts.backend == "onnx" else f"-{opts.backend}"
    return REPOS / f"{opts.model}{suffix}" / opts.model


def artifact(opts: argparse.Namespace) -> Path:
    return model_folder(opts) / "1" / ARTIFACTS[opts.backend]


def build(opts: argparse.Namespace) -> Case:
    """The model in the precision asked for (inputs and outputs too), and its config."""
    folder = model_folder(opts)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(exist_ok=True)
    marker = folder / "1" / f".built-{opts.size}-{opts.precision}"
    if not marker.exists():
        if opts.backend == "onnx":
            build_onnx(opts, artifact(opts))
        else:
            build_torch(opts, artifact(opts))
        for old in (folder / "1").glob(".built-*"):
            old.unlink()
        marker.touch()
    case = Case(opts.model, "1", folder)
    write_config(case, opts, max(instances for _, instances in opts.workers))
    fill_requests(case, rows=opts.rows)
    return case


def build_onnx(opts: argparse.Namespace, target: Path) -> None:
    from tensorgate.edge.convert import to_fp16

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        fp32.write_bytes(MODELS[opts.model](opts.size).SerializeToString())
        if opts.precision == "fp16":
            to_fp16(fp32, target, keep_io_types=False)
        else:
            shutil.copyfile(fp32, target)


def build_torch(opts: argparse.Namespace, target: Path) -> None:
    """TorchScript with the ONNX graph's very weights (build_resnet_torch), in the precision
    asked for: the same model on either backend."""
    import warnings

    from loadtest.build_resnet_torch import make_torch_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript's own
        make_torch_model(opts.model, opts.size, opts.precision == "fp16").save(str(target))


def write_config(case: Case, opts: argparse.Namespace, instances: int) -> None:
    case.config_path.write_text(CONFIG.format(
        backend=opts.backend, graphs=str(opts.cuda_graphs).lower(),
        model=opts.model, size=opts.size, precision=opts.precision, max_batch=opts.max_batch,
        delay_us=opts.delay_us, instances=instances, device=opts.device,
        datatype="FP16" if opts.precision == "fp16" else "FP32", width=3 * opts.size ** 2,
        classes=CLASSES))


def ceiling(case: Case, opts: argparse.Namespace) -> tuple[list[BatchPoint], list[str]]:
    """The backend as the runtime builds it, in this process: one session, then as many
    sessions side by side as the served layouts run, at each batch size; and what runs it."""
    from runtime.backends import load_backend

    config = load_model_config(case.config_path, case.name)
    sessions = max(workers * instances for workers, instances in opts.workers)
    path = artifact(opts)
    layouts = [[load_backend(opts.backend, path, config, opts.threads)]]
    if sessions > 1:
        layouts.append([load_backend(opts.backend, path, config, opts.threads, quiet=True)
                        for _ in range(sessions)])
    first = layouts[0][0]
    session = getattr(first, "session", None)
    providers = (session.get_providers() if session is not None
                 else [f"PyTorch {torch_version()} on {first.device}"])
    case.expected = np.tile(layouts[0][0].run([case.row.reshape(1, -1)])[0], (opts.rows, 1))
    rng = np.random.default_rng(11)
    points = []
    for backends in layouts:
        for size in [b for b in (1, 8, 16, 32, 64, 128, 256) if b <= opts.max_batch]:
            x = rng.random((size, case.row.size), dtype=np.float32).astype(case.row.dtype)
            # As the runtime's scheduler: a thread per batch an instance keeps in flight.
            callers = [b for b in backends for _ in range(getattr(b, "pipeline_depth", 1))]
            points.append(time_batch(callers, x, opts.ceiling_s))
            print(f"  in-process {points[-1].layout}: {points[-1].rows_per_s:9.0f} rows/s, "
                  f"p50 {points[-1].p50_ms:.2f} ms", flush=True)
    return points, providers


def torch_version() -> str:
    import torch

    return str(torch.__version__)


def start_servers(children: Children, opts: argparse.Namespace, workers: int,
                  clients: mps.Clients | None = None) -> tuple[list[str], str, str]:
    """Runtime workers over ``loadtest/.models-gpu/MODEL`` (joining an MPS daemon through
    ``clients``) and a gateway in front of them; the workers' gRPC addresses and the gateway's
    gRPC and HTTP addresses."""
    env = (clients or mps.Clients()).environ(os.environ)
    started = [start_runtime(children, f"runtime{index}", model_folder(opts).parent,
                             opts.threads, env)
               for index in range(workers)]
    gateway_grpc, gateway_http = start_gateway(
        children, [lane for _, lane in started],
        ("--no-auth", "--max-in-flight", str(4 * opts.concurrency)), opts.gateway_processes)
    return [address for address, _ in started], gateway_grpc, gateway_http


def serve(case: Case, opts: argparse.Namespace, children: Children, workers: int,
          instances: int) -> list[Row]:
    """One layout: ``workers`` runtime processes of ``instances`` sessions each, sharing the
    GPU through CUDA MPS as `serve` would; the first worker called directly, then the gateway
    over gRPC and HTTP, then in shared memory."""
    write_config(case, opts, instances)
    sharing = mps.plan("auto", workers, os.environ)
    with tempfile.TemporaryDirectory(prefix="tg-mps-") as folder, \
            mps.daemon(sharing, Path(folder)) as clients:
        layout = f"{workers}x{instances}" + (" (MPS)" if clients.env else "")
        return _serve_layout(case, opts, children, workers, clients, layout)


def _serve_layout(case: Case, opts: argparse.Namespace, children: Children, workers: int,
                  clients: mps.Clients, layout: str) -> list[Row]:
    runtimes, gateway_grpc, gateway_http = start_servers(children, opts, workers, clients)
    probes = [runtime_probe(runtime, case) for runtime in runtimes]
    rows = []
    try:
        for key, (name, run, check) in load_runs(case, opts, children, runtimes,
                                                 (gateway_grpc, gateway_http)).items():
            if key not in opts.paths:
                continue
            row = Row(layout, name)
            if key in SHM_PATHS:
                row.note = shm_rows.unavailable(key) or ""
            if not row.note:
                check()
                measured(row, run, opts, children, probes, cuda=key.startswith("cuda"))
                children.check_alive()
                check()
            print(f"  {layout} {summary(row, opts.rows)}", flush=True)
            rows.append(row)
    finally:
        for name in ["gateway", *(f"runtime{i}" for i in range(workers))]:
            code = children.stop(name)
            if code != 0:
                children.problems.append(f"{name} exited with code {code} on SIGTERM")
    return rows


def gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        return "no GPU (nvidia-smi not found)"
    found = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    return found.stdout.strip() or found.stderr.strip()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.gpu_bench", description=__doc__)
    add = parser.add_argument
    add("--model", choices=sorted(MODELS), default="resnet50",
        help="resnet50 (the default), or passthrough: its inputs and outputs with next to no "
             "compute, what the serving path alone carries for requests of this size")
    add("--backend", choices=sorted(ARTIFACTS), default="onnx",
        help="onnx (ONNX Runtime, the default) or torch (TorchScript, the same weights)")
    add("--cuda-graphs", choices=("on", "off"), default=None,
        help="optimization.cuda.graphs in the served config (on for a cuda device, else off)")
    add("--size", type=int, default=224, help="image side (224)")
    add("--rows", type=int, default=1, help="images per request (1)")
    add("--precision", choices=("fp16", "fp32"), default="fp16")
    add("--device", default="cuda:0", help="the model's device (cuda:0; cpu to try the bench)")
    add("--workers", default="1x2,2x1",
        help="served layouts, runtime processes x instances each (1x2,2x1)")
    add("--max-batch", type=int, default=64, help="max_batch_size and preferred batch (64)")
    add("--delay-us", type=int, default=2000, help="max_queue_delay_microseconds (2000)")
    add("--threads", type=int, default=2, help="the runtime's --threads (2)")
    add("--gateway-processes", type=int, default=8, help="gateway processes (8)")
    add("--concurrency", type=int, default=256, help="closed-loop callers (256)")
    add("--connections", type=int, default=16, help="gRPC connections they share (16)")
    add("--generator-threads", type=int, default=4, help="h2load / wrk threads (4)")
    add("--duration", type=float, default=10.0, help="seconds measured per run (10)")
    add("--warmup", type=float, default=2.0, help="seconds of load before each run (2)")
    add("--ceiling-s", type=float, default=2.0, help="seconds per in-process point (2)")
    add("--paths", default=",".join(PATHS),
        help="the served paths to measure, comma-separated (all): runtime (called directly "
             "over gRPC), grpc and http (the gateway's, h2load and wrk), shm-grpc, shm-http, "
             "cuda-grpc and cuda-http (the gateway's with the tensors in system or CUDA shared "
             "memory: perf_analyzer, from PERF_ANALYZER or PATH), floor-grpc and floor-http "
             "(do-nothing servers fed the same requests, once before the layouts)")
    add("--out", type=Path, default=None, help="write the report here too")
    opts = parser.parse_args(argv)
    try:
        opts.workers = [tuple(int(n) for n in layout.split("x", 1)) for layout in
                        opts.workers.split(",") if layout]
    except ValueError:
        parser.error("--workers: a list of PROCESSESxINSTANCES, e.g. 1x2,2x1")
    if not opts.workers or any(len(w) != 2 or min(w) < 1 for w in opts.workers):
        parser.error("--workers: a list of PROCESSESxINSTANCES, e.g. 1x2,2x1")
    opts.paths = opts.paths.split(",")
    if not opts.paths or set(opts.paths) - set(PATHS):
        parser.error(f"--paths: a comma-separated list of {', '.join(PATHS)}")
    if not 1 <= opts.rows <= opts.max_batch:
        parser.error(f"--rows: 1 to --max-batch ({opts.max_batch}) images per request")
    if opts.cuda_graphs is None:
        opts.cuda_graphs = opts.device.startswith("cuda")
    else:
        opts.cuda_graphs = opts.cuda_graphs == "on"
    opts.argv = argv
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    print("building the model", flush=True)
    case = build(opts)
    facts = machine() | {"GPU": gpu_name()}
    print("ceiling (in-process backend):", flush=True)
    points, providers = ceiling(case, opts)
    facts["providers of the in-process session"] = ", ".join(providers)
    facts["perf_analyzer (shared-memory rows)"] = triton_perf.find() or "not found"
    print("alone on the device:", flush=True)
    alone = device_alone(opts.model, opts.size, opts.precision, opts.device, opts.max_batch,
                         opts.threads, opts.ceiling_s)
    print(f"  batch {alone.batch}: {alone.rows_per_s:9.0f} rows/s, p50 {alone.p50_ms:.2f} ms",
          flush=True)
    children = Children(LOGS)
    try:
        rows = floor_rows(case, opts, children)
        if set(opts.paths) - set(FLOOR_PATHS):  # NOTE: floors alone start no layout
            print("served:", flush=True)
            rows += [row for workers, instances in opts.workers
                     for row in serve(case, opts, children, workers, instances)]
    finally:
        children.close()
    facts["took"] = f"{time.time() - started:.0f} s"
    text = render(opts, facts, points, alone, rows, against_floors(rows, opts.rows))
    print(text)
    if opts.out is not None:
        opts.out.write_text(text)
    errors = sum(row.errors for row in rows)
    if errors or children.problems:
        print(f"FAILED: {errors} errors; {children.problems}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
