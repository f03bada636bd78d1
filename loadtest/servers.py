"""The servers under test as child processes: start, wait for ready, measure, stop.

Each child starts in its own session, so its CPU time and memory are those of every process in
that session (a gateway started with ``--processes N`` is a supervisor and N gateways).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from common.proto import grpc_service_pb2 as pb
from loadtest.cases import LOGS, REPO, ROOT, SERVICE, Case
from loadtest.floors import FLOOR_READY

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
#: Readiness lines, old and new: a log line on stderr, or the role's announcement on stdout.
RUNTIME_READY = ("tensorgate-runtime ready", "runtime serving gRPC on")
GATEWAY_READY = ("tensorgate-gateway ready", "gateway serving HTTP on")
GROUP_READY = "tensorgate ready"  # the supervisor of `gateway --processes N`, once all are up

Ready = Callable[[str], bool]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_lane_names = itertools.count()
_lane_folder: list[Path] = []


def lane_address() -> str:
    """A fresh lane address for a runtime worker: a unix socket, as `tensorgate serve` gives
    its workers (a lane over TCP loopback costs more kernel time per write)."""
    if not _lane_folder:
        folder = Path(tempfile.mkdtemp(prefix="tensorgate-bench-"))
        atexit.register(shutil.rmtree, folder, True)
        _lane_folder.append(folder)
    return f"unix:{_lane_folder[0]}/lane-{next(_lane_names)}.sock"


def any_of(*markers: str) -> Ready:
    return lambda log: any(marker in log for marker in markers)


def gateways_ready(processes: int) -> Ready:
    if processes == 1:
        return any_of(*GATEWAY_READY)
    return lambda log: GROUP_READY in log or log.count(GATEWAY_READY[1]) >= processes


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _sessions() -> dict[int, list[tuple[int, list[str]]]]:
    """Every process on the machine by session id: (pid, the fields of /proc/PID/stat after
    the command name)."""
    found: dict[int, list[tuple[int, list[str]]]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        found.setdefault(int(fields[3]), []).append((int(entry.name), fields))
    return found


def _cpu_ticks(fields: list[str]) -> int:
    """User + system clock ticks from the fields of /proc/PID/stat after the command name."""
    return int(fields[11]) + int(fields[12])


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Children:
    """Server processes logging to files; ``close`` stops every one: SIGTERM, then SIGKILL."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.problems: list[str] = []

    def start(self, name: str, argv: list[str], ready: Ready,
              env: dict[str, str] | None = None) -> None:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as sink:
            self.procs[name] = subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready(log.read_text(errors="replace")):
            code = self.procs[name].poll()
            if code is not None or time.monotonic() > deadline:
                self.stop(name)
                state = f"exited with code {code}" if code is not None else "is not ready"
                raise RuntimeError(f"{name} {state}; its log {log}:\n{tail(log)}")
            time.sleep(0.05)

    def stop(self, name: str) -> int | None:
        """SIGTERM, SIGKILL after STOP_TIMEOUT_S; then SIGKILL whatever is left of its session."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"warning: {name} ignored SIGTERM for {STOP_TIMEOUT_S:.0f}s; killing it",
                      file=sys.stderr)
                proc.kill()
        code = proc.wait()
        left = [pid for pid, _ in _sessions().get(proc.pid, [])]
        if left:
            self.problems.append(f"{name} left processes {left} behind; killed them")
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return code

    def check_alive(self) -> None:
        """Raise if a child has exited (crashed under load), with the end of its log."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = self.log_dir / f"{name}.log"
                raise RuntimeError(f"{name} exited with code {proc.returncode} during the run; "
                                   f"its log {log}:\n{tail(log)}")

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds each running child's session has used so far."""
        return {name: sum(self.process_cpu_seconds(name).values()) for name in self.procs}

    def process_cpu_seconds(self, name: str) -> dict[int, float]:
        """User + system CPU seconds of each process of a child's session, by process id."""
        proc = self.procs.get(name)
        if proc is None:
            return {}
        ticks = os.sysconf("SC_CLK_TCK")
        return {pid: _cpu_ticks(fields) / ticks for pid, fields in _sessions().get(proc.pid, [])}

    def thread_cpu_seconds(self, name: str) -> dict[int, float]:
        """User + system CPU seconds of each thread of a child's own process, by thread id (the
        process id is its main thread's)."""
        proc = self.procs.get(name)
        if proc is None:
            return {}
        ticks = os.sysconf("SC_CLK_TCK")
        found = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(f"/proc/{proc.pid}/task"):
                with contextlib.suppress(OSError), open(f"{entry.path}/stat") as stat:
                    fields = stat.read().rpartition(")")[2].split()
                    found[int(entry.name)] = _cpu_ticks(fields) / ticks
        return found

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of each running child's session (VmRSS summed), MiB."""
        sessions = _sessions()
        return {name: sum(_rss_kib(pid) for pid, _ in sessions.get(proc.pid, [])) / 1024
                for name, proc in self.procs.items()}

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)


def start_floor(children: Children, protocol: str, name: str = "floor",
                processes: int = 1) -> str:
    """A do-nothing server (``grpc`` or ``http``) named ``name``, of ``processes`` processes
    sharing its port; its address."""
    address = f"127.0.0.1:{free_port()}"
    children.start(name, [sys.executable, "-m", "loadtest.floors", protocol, "--listen",
                          address, "--processes", str(processes)], any_of(FLOOR_READY))
    return address


def start_runtime(children: Children, name: str, repository: Path, threads: int,
                  env: dict[str, str] | None = None) -> tuple[str, str]:
    """A runtime worker named ``name`` over ``repository`` (in ``env``, else ours); its gRPC
    address and its lane."""
    address, lane = f"127.0.0.1:{free_port()}", lane_address()
    children.start(name, [sys.executable, "-m", "tensorgate", "runtime", "--model-repository",
                          str(repository), "--listen", address, "--lane", lane, "--threads",
                          str(threads)], any_of(*RUNTIME_READY), env)
    return address, lane


def start_gateway(children: Children, lanes: list[str], extra: tuple[str, ...] = (),
                  processes: int = 1, name: str = "gateway") -> tuple[str, str]:
    """``tensorgate gateway`` in front of ``lanes``, with ``extra`` arguments; its gRPC and HTTP
    addresses."""
    grpc_port, http_port = free_port(), free_port()
    argv = [sys.executable, "-m", "tensorgate", "gateway", "--host", "127.0.0.1",
            "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", "-1",
            "--processes", str(processes), *extra]
    for lane in lanes:
        argv += ["--runtime", lane]
    children.start(name, argv, gateways_ready(processes))
    return f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"


def start_servers(children: Children, threads: int, gateway_processes: int
                  ) -> tuple[str, str, str]:
    """A runtime worker over the bench repository and a gateway in front of it, through the
    lane; the runtime's gRPC address and the gateway's gRPC and HTTP addresses."""
    runtime, lane = start_runtime(children, "runtime", REPO, threads)
    return (runtime, *start_gateway(children, [lane], ("--no-auth",), gateway_processes))


def stop_servers(children: Children) -> list[str]:
    """Gateway first, then runtime; a problem for each that did not exit cleanly."""
    problems = []
    for name in ("gateway", "runtime"):
        code = children.stop(name)
        if code != 0:
            problems.append(f"{name} exited with code {code} on SIGTERM; its log: "
                            f"{LOGS.relative_to(ROOT) / (name + '.log')}")
    return problems


Probe = Callable[[], np.ndarray]


def runtime_probe(target: str, case: Case) -> Probe:
    """A reader of the runtime's statistics for one model version (Triton's extension)."""
    request = pb.ModelStatisticsRequest(name=case.name, version=case.version).SerializeToString()

    def read() -> np.ndarray:
        with grpc.insecure_channel(target) as channel:
            answer = channel.unary_unary(f"/{SERVICE}/ModelStatistics")(request, timeout=30)
        stats = pb.ModelStatisticsResponse.FromString(answer).model_stats[0]
        infer = stats.inference_stats
        return np.array([stats.execution_count, stats.inference_count, infer.queue.ns,
                         infer.queue.count, infer.compute_infer.ns, infer.compute_infer.count,
                         infer.fail.count, infer.compute_input.ns, infer.compute_input.count],
                        dtype=np.int64)

    return read


Batching = tuple[int, float, float, float, int, float]


def batching(delta: np.ndarray) -> Batching | None:
    """Batches run, mean rows per batch, mean queue µs per request, mean batch compute µs,
    requests the runtime failed, and mean µs a batch took to gather its inputs."""
    (executions, rows, queue_ns, queued, infer_ns, inferred, failed, input_ns,
     gathered) = (int(v) for v in delta)
    if not executions and not failed:
        return None
    return (executions, rows / max(1, executions), queue_ns / max(1, queued) / 1e3,
            infer_ns / max(1, inferred) / 1e3, failed, input_ns / max(1, gathered) / 1e3)
