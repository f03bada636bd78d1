"""CUDA MPS for `serve`: runtime workers that share a GPU run their kernels side by side through
one MPS control daemon of serve's own, instead of time-slicing a CUDA context each."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common.model_config import ConfigError

log = logging.getLogger("tensorgate")

CONTROL = "nvidia-cuda-mps-control"
MODES = ("auto", "on", "off")
PIPE, LOGS = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"
VISIBLE = "CUDA_VISIBLE_DEVICES"
#: Where the driver looks for a daemon when CUDA_MPS_PIPE_DIRECTORY is not set.
DEFAULT_PIPE = Path("/tmp/nvidia-mps")
START_TIMEOUT_S = 30.0
QUIT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Plan:
    """Whether `serve` starts a daemon (the control program's path) and what to log about it."""

    binary: str | None = None
    note: str = ""
    warn: bool = False
    #: `--mps on`: a daemon that fails to start stops `serve`.
    required: bool = False


@dataclass(frozen=True)
class Clients:
    """What a runtime worker's environment takes so its CUDA contexts join the daemon."""

    env: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` less `unset`, with `env` over it."""
        return {**{k: v for k, v in base.items() if k not in self.unset}, **self.env}


def _gpus() -> int:
    from runtime.backends.base import cuda_device_count  # NOTE: numpy: not for every CLI call

    return cuda_device_count()


def plan(mode: str, workers: int, environ: Mapping[str, str],
         which: Callable[[str], str | None] = shutil.which,
         gpus: Callable[[], int] = _gpus) -> Plan:
    """`--mps` for `workers` runtime workers: `auto` starts a daemon where the control program
    and a GPU are found, `on` wherever the program is (ConfigError without it), `off` never."""
    if mode not in MODES:
        raise ConfigError(f"--mps {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off" or workers < 2:
        return Plan()
    existing = environ.get(PIPE) or (str(DEFAULT_PIPE) if (DEFAULT_PIPE / "control").exists()
                                     else "")
    if existing:
        return Plan(note=f"CUDA MPS: the runtime workers join the daemon already set up in "
                         f"{existing}")
    binary = which(CONTROL)
    if binary is None:
        if mode == "on":
            raise ConfigError(f"--mps on: {CONTROL} is not on PATH (it comes with the NVIDIA "
                              f"driver's compute utilities); install it, or use --mps auto|off")
        if gpus() > 0:
            return Plan(note=f"{workers} runtime workers share the GPUs without CUDA MPS ({CONTROL}"
                             f" is not on PATH): each worker's CUDA context takes its turn on a "
                             f"GPU. Install NVIDIA's compute utilities, or serve one worker with "
                             f"more instances", warn=True)
        return Plan()
    if mode == "auto" and gpus() == 0:
        return Plan()
    return Plan(binary=binary, note=f"CUDA MPS: {workers} runtime workers share the GPUs through "
                                    f"a control daemon of their own", required=mode == "on")


#: A CUDA context created and destroyed through the driver, as a worker's first one would be.
PROBE = """
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    sys.exit(f"no CUDA driver: {exc}")
device, context = ctypes.c_int(), ctypes.c_void_p()
for step, code in (("cuInit", lambda: cuda.cuInit(0)),
                   ("cuDeviceGet", lambda: cuda.cuDeviceGet(ctypes.byref(device), 0)),
                   ("cuCtxCreate", lambda: cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device)),
                   ("cuCtxDestroy", lambda: cuda.cuCtxDestroy_v2(context))):
    error = code()
    if error:
        sys.exit(f"{step} returned CUDA error {error} through the MPS daemon")
"""


def check_context(clients: Clients) -> str:
    """Whether a CUDA context can be made through the daemon: "" when it can, else why."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], env=clients.environ(os.environ),
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=START_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"a first CUDA context could not be made: {exc}"
    if done.returncode == 0:
        return ""
    said = " ".join(done.stderr.decode(errors="replace").split()[-40:])
    return f"a first CUDA context could not be made: {said or f'exit code {done.returncode}'}"


@contextmanager
def daemon(chosen: Plan, folder: Path,
           probe: Callable[[Clients], str] = check_context) -> Iterator[Clients]:
    """Run the planned daemon, its pipes and logs under `folder`, while the block runs; what
    the workers' environment takes. A daemon that fails to start is a ConfigError where it is
    required (`--mps on`), else a warning: the workers then run without MPS."""
    if chosen.note:
        (log.warning if chosen.warn else log.info)("%s", chosen.note)
    if chosen.binary is None:
        yield Clients()
        return
    env = {PIPE: str(folder / "pipe"), LOGS: str(folder / "log")}
    for path in env.values():
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
    clients = Clients(env, (VISIBLE,) if VISIBLE in os.environ else ())
    failure = _run(chosen.binary, ["-d"], env, None, START_TIMEOUT_S)
    if failure:
        failure = f"{CONTROL} -d: {failure}"
    else:
        # NOTE: a daemon can start and its server still fail each client (a container
        # without the host's IPC, a GPU that refuses it): the workers would load no model.
        failure = probe(clients)
        if failure:
            _quit(chosen.binary, env)
    if failure:
        if chosen.required:
            raise ConfigError(f"--mps on: CUDA MPS did not start: {failure}")
        log.warning("CUDA MPS not used (%s); the runtime workers take turns on the GPU", failure)
        yield Clients()
        return
    log.info("CUDA MPS control daemon started, its pipes in %s", env[PIPE])
    try:
        yield clients
    finally:
        _quit(chosen.binary, env)


def _quit(binary: str, env: dict[str, str]) -> None:
    failure = _run(binary, [], env, b"quit\n", QUIT_TIMEOUT_S)
    if failure:
        log.warning("the CUDA MPS control daemon did not quit (%s); its pipes were in %s",
                    failure, env[PIPE])


def _run(binary: str, args: list[str], env: dict[str, str], stdin: bytes | None,
         timeout: float) -> str:
    """Run the control program; what went wrong, or "" when it exited 0. Its output goes to a
    file: with `-d` the daemon it forks could hold a pipe open long after the program exits."""
    said = Path(env[LOGS]) / "control.out"
    try:
        with said.open("wb") as out:
            feed: dict = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
            done = subprocess.run([binary, *args], env={**os.environ, **env}, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout, check=False,
                                  **feed)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return ""
    text = " ".join(said.read_text(errors="replace").split())[:300]
    return f"exit code {done.returncode}{': ' + text if text else ''}"
