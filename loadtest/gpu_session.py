"""One prepared run for a session lent a GPU machine (issue 23): install what travelled, run the
GPU-gated and shared-memory tests, then gpu_bench on both backends and with two workers through
CUDA MPS, all under a time budget, everything written under one folder. Here first: ``prepare``
fills ``loadtest/.gpu-carry``.

    python -m loadtest.gpu_session prepare               # here: wheels, perf_analyzer, h2load, wrk
    python -m loadtest.gpu_session run --dry-run         # the plan, nothing run
    python3 -m loadtest.gpu_session run --out "$OUT"     # on the GPU machine (loadtest/README.md)
    python -m loadtest.gpu_session run --device cpu --out DIR   # a smoke run with tiny sizes
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.gpu_carry import CARRY, TOOLS, install, prepare

ROOT = Path(__file__).resolve().parents[1]
#: What the device's tests cover: the GPU-gated paths, then shared memory.
TESTS = ("tests/unit/test_gpu_paths.py", "tests/unit/test_torch_cuda_cpu.py",
         "tests/unit/test_precision.py", "tests/integration/test_gpu_config.py",
         "tests/unit/test_shm_regions.py", "tests/unit/test_shm_gateway.py",
         "tests/unit/test_cuda_shm.py", "tests/integration/test_shared_memory.py",
         "tests/integration/test_cuda_shared_memory.py", "tests/integration/test_gpu_bench_shm.py",
         "tests/integration/test_mps_gpu.py")
#: gpu_bench on a GPU: ResNet-50 fp16, one runtime of two instances, 256 callers, 1 image per
#: request; every served path (the bytes in the request, system and CUDA shared memory).
GPU_BENCH = ("--workers", "1x2", "--duration", "5", "--warmup", "1", "--ceiling-s", "0.5")
GPU_PATHS = "grpc,http,shm-grpc,shm-http,cuda-grpc,cuda-http"
#: The paths of the two-worker layout (MPS): the bytes in the request.
MPS_PATHS = "grpc,http"
#: The do-nothing servers fed the same requests: the bound of the served rows on that
#: machine's cores (the same for either backend, so run once).
FLOORS = "floor-grpc,floor-http"
#: The same with tiny sizes on the CPU: proves the plan runs, measures nothing.
SMOKE_BENCH = ("--device", "cpu", "--size", "16", "--max-batch", "4", "--workers", "1x1",
               "--gateway-processes", "1", "--concurrency", "4", "--connections", "1",
               "--generator-threads", "1", "--duration", "0.5", "--warmup", "0.2",
               "--ceiling-s", "0.1", "--threads", "1")
SMOKE_PATHS = "grpc,shm-grpc,cuda-grpc"
DEFAULT_OUT = ROOT / "loadtest" / ".models-gpu" / "session"
#: The steps' and the servers' logs, packed.
ARCHIVE = "logs.tar.gz"
#: Seconds kept back for packing the server logs when the budget runs short.
RESERVE_S = 15.0
#: A step given less than this is skipped rather than started.
LEAST_S = 30.0


@dataclass(frozen=True)
class Step:
    """One command of the run: its log (and report) under the output folder, its time limit."""

    name: str
    argv: tuple[str, ...]
    timeout_s: float
    report: str = ""  # a file the command writes under the output folder


def python() -> str:
    return sys.executable


def plan(opts: argparse.Namespace) -> list[Step]:
    """The steps, in order; the benches write their reports under ``opts.out``."""
    bench, paths = ((SMOKE_BENCH, SMOKE_PATHS) if opts.device == "cpu" else
                    (("--device", opts.device, *GPU_BENCH), GPU_PATHS))
    facts = ("import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda',"
             " torch.cuda.is_available(), torch.cuda.get_device_name(0) if "
             "torch.cuda.is_available() else '-'); print('onnxruntime', ort.__version__,"
             " ort.get_available_providers())")
    steps = [Step("facts", (python(), "-c", facts), 60),
             Step("tests", (python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS),
                  180)]
    for backend in ("torch", "onnx"):
        name = f"gpu-{backend}"
        # NOTE: the floors once, with the torch bench: every image has torch, and a step of
        # their own would bring back more files than a call returns.
        these = f"{paths},{FLOORS}" if backend == "torch" else paths
        steps.append(Step(name, (python(), "-m", "loadtest.gpu_bench", "--backend", backend,
                                 *bench, "--paths", these, "--out", str(opts.out / f"{name}.md")),
                          240, f"{name}.md"))
    # NOTE: last, with what time is left: two workers of one instance each on one GPU, through
    # CUDA MPS where its control program is (the report's layout says so), against 1x2 above.
    steps.append(Step("gpu-mps", (python(), "-m", "loadtest.gpu_bench", "--backend", "torch",
                                  *bench, "--workers", "2x1", "--paths", MPS_PATHS, "--out",
                                  str(opts.out / "gpu-mps.md")), 150, "gpu-mps.md"))
    return [step for step in steps if not opts.only or step.name in opts.only]


def onnx_on_cuda() -> str | None:
    """Why ONNX Runtime cannot run the GPU bench here (no CUDA provider); None if it can."""
    probe = subprocess.run([python(), "-c", "import onnxruntime as o; "
                            "print(o.__version__, ' '.join(o.get_available_providers()))"],
                           capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        return f"onnxruntime does not import: {probe.stderr.strip()[-300:]}"
    if "CUDAExecutionProvider" not in probe.stdout:
        return (f"onnxruntime {probe.stdout.strip()} has no CUDAExecutionProvider (the "
                "onnxruntime-gpu wheel is too large to travel in one call)")
    return None


def blocked(step: Step, opts: argparse.Namespace, env: dict[str, str]) -> str | None:
    """Why a bench cannot run here: no h2load or wrk (a machine without a registry would
    wait on apt-get instead), or no CUDA provider for the ONNX bench; None if it can."""
    if not step.name.startswith("gpu-"):
        return None
    lacking = [tool for tool in TOOLS if shutil.which(tool, path=env.get("PATH")) is None]
    if lacking:
        return (f"{' and '.join(lacking)} not found: run `python -m loadtest.gpu_session "
                "prepare` where they are installed and carry loadtest/.gpu-carry")
    return onnx_on_cuda() if step.name == "gpu-onnx" and opts.device != "cpu" else None


class Log:
    """Progress on stdout and in ``session.log``, each line stamped with the seconds since
    the start."""

    def __init__(self, out: Path) -> None:
        self.started = time.monotonic()
        self.path = out / "session.log"

    def __call__(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:5.0f} s] {text}"
        print(line, flush=True)
        with self.path.open("a") as sink:
            sink.write(line + "\n")

    def left(self, budget_s: float) -> float:
        return budget_s - (time.monotonic() - self.started)


def run_step(step: Step, out: Path, env: dict[str, str], timeout_s: float, log: Log) -> int:
    """Run one step, its output teed to ``OUT/NAME.log`` and to stdout; SIGTERM at its time
    limit (a bench then stops its servers), SIGKILL 20 s later. Its exit status, 124 when it
    ran past its limit."""
    log(f"{step.name}: {' '.join(step.argv)} (at most {timeout_s:.0f} s)")
    proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    stopped: list[str] = []

    def stop(how: str) -> None:
        if proc.poll() is not None:
            return
        stopped.append(how)
        if how == "SIGTERM":
            proc.terminate()
        else:
            proc.kill()

    timers = [threading.Timer(timeout_s, stop, ("SIGTERM",)),
              threading.Timer(timeout_s + 20, stop, ("SIGKILL",))]
    for timer in timers:
        timer.start()
    try:
        assert proc.stdout is not None
        with (out / f"{step.name}.log").open("w") as sink:
            for line in proc.stdout:
                sink.write(line)
                print(f"  {step.name}| {line}", end="", flush=True)
        code = proc.wait()
    finally:
        for timer in timers:
            timer.cancel()
    log(f"{step.name}: " + (f"ran past its limit ({', '.join(stopped)})" if stopped
                            else f"exit {code}"))
    return 124 if stopped else code


def pack_logs(out: Path, steps: list[Step], log: Log) -> None:
    """The steps' logs (moved) and the benches' server logs, in one archive: at most 8 files
    come back from the machine, and the session log and the reports are read first."""
    servers = ROOT / "loadtest" / ".models-gpu" / ".logs"
    ran = [out / f"{step.name}.log" for step in steps if (out / f"{step.name}.log").is_file()]
    with tarfile.open(out / ARCHIVE, "w:gz") as archive:
        for path in ran:
            archive.add(path, arcname=f"steps/{path.name}")
        for path in sorted(servers.glob("*.log")) if servers.is_dir() else []:
            archive.add(path, arcname=f"servers/{path.name}")
    for path in ran:
        path.unlink()
    log(f"the steps' and the servers' logs packed into {out / ARCHIVE}")


def session(opts: argparse.Namespace) -> int:
    """Set up, then each step under the budget; 1 when any step failed."""
    opts.out.mkdir(parents=True, exist_ok=True)
    log = Log(opts.out)
    steps = plan(opts)
    log(f"plan ({opts.budget_s:.0f} s in all): " + ", ".join(
        f"{s.name} (≤ {s.timeout_s:.0f} s)" for s in steps))
    env = install(opts.carry, opts.site, dict(os.environ) | {"PYTHONUNBUFFERED": "1"}, log,
                  dry_run=opts.dry_run)
    failed = []
    for step in steps:
        if opts.dry_run:
            log(f"would run {step.name}: {' '.join(step.argv)}")
            continue
        why = blocked(step, opts, env)
        limit = min(step.timeout_s, log.left(opts.budget_s) - RESERVE_S)
        if why is None and limit < LEAST_S:
            why = f"out of time ({limit:.0f} s left for it)"
        if why is not None:
            log(f"{step.name}: skipped: {why}")
            continue
        if run_step(step, opts.out, env, limit, log) != 0:
            failed.append(step.name)
    if not opts.dry_run:
        pack_logs(opts.out, steps, log)
    log(f"finished: {'failed: ' + ', '.join(failed) if failed else 'every step that ran passed'}")
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.gpu_session",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help=f"fill {CARRY.relative_to(ROOT)} here, for the machine")
    run = sub.add_parser("run", help="set up and run the steps (on the GPU machine)")
    run.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or DEFAULT_OUT),
                     help="where the logs and reports go ($OUT, else loadtest/.models-gpu/"
                          "session, ignored by git)")
    run.add_argument("--device", default="cuda:0",
                     help="cuda:0 (the default), or cpu: a smoke run with tiny sizes")
    run.add_argument("--budget-s", type=float, default=540.0,
                     help="seconds for everything (540: a 600 s call with room to spare)")
    run.add_argument("--only", type=lambda v: v.split(","), default=[],
                     help="run only these steps (facts, tests, gpu-torch, gpu-onnx)")
    run.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    run.add_argument("--carry", type=Path, default=CARRY, help=argparse.SUPPRESS)
    run.add_argument("--site", type=Path, default=Path("/tmp/tensorgate-site"),
                     help="where carried wheels are installed (/tmp/tensorgate-site)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.command == "prepare":
        return prepare()
    return session(opts)


if __name__ == "__main__":
    sys.exit(main())
