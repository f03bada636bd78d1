"""gpu_bench's shared-memory rows: NVIDIA's perf_analyzer with ``--shared-memory system|cuda``
against the gateway (``triton_perf.run_point``), measured like the other served rows, or a
reason why a row could not run (CUDA's, without a GPU)."""

from __future__ import annotations

from collections.abc import Callable

from loadtest.loadgen import Outcome
from loadtest.triton_perf import find, run_point
from runtime import cuda_api
from runtime.backends.base import cuda_device_count

#: --paths names of the shared-memory rows: (Triton's shared-memory kind, protocol).
SHM_PATHS = {"shm-grpc": ("system", "grpc"), "shm-http": ("system", "http"),
             "cuda-grpc": ("cuda", "grpc"), "cuda-http": ("cuda", "http")}
PROTOCOLS = {"grpc": "gRPC", "http": "HTTP"}


def path_name(key: str) -> str:
    kind, protocol = SHM_PATHS[key]
    return f"gateway → runtime, {PROTOCOLS[protocol]}, {kind} shared memory"


def unavailable(key: str = "") -> str | None:
    """Why the shared-memory row ``key`` cannot run, before trying it (no perf_analyzer; for
    CUDA shared memory, no GPU or no CUDA runtime library for the workers); else None."""
    if find() is None:
        return "not available: perf_analyzer not found (set PERF_ANALYZER or put it on PATH)"
    if key and SHM_PATHS[key][0] == "cuda":
        if cuda_device_count() == 0:
            return "not available: needs a CUDA GPU: none is visible"
        if cuda_api.load() is None:
            return f"not available: {cuda_api.NO_LIBRARY}"
    return None


def measure(key: str, address: str, model: str, concurrency: int, rows: int,
            output_bytes: int, seconds: float, warmup: bool,
            meter: Callable[[], dict[str, float]],
            headers: tuple[tuple[str, str], ...] = ()) -> Outcome:
    """One perf_analyzer run of ``concurrency`` callers, each request ``rows`` images whose
    inputs and outputs lie in shared memory; the servers' CPU over its whole run. Raises
    triton_perf.PerfFailed with what perf_analyzer (or the server, through it) said."""
    tool = find()
    assert tool is not None, "unavailable() is asked first"
    kind, protocol = SHM_PATHS[key]
    extra: tuple[str, ...] = ("--shared-memory", kind, "--output-shared-memory-size",
                              str(output_bytes), "-b", str(rows))
    for name, value in headers:
        extra += ("-H", f"{name}: {value}")
    before = meter()
    point = run_point(tool, model, address, protocol, concurrency, seconds, extra,
                      warmup=2 * concurrency if warmup else 0)
    after = meter()
    server = {name: after[name] - before[name] for name in after if name in before}
    latency = {"50": point.p50_us / 1e3, "90": point.p90_us / 1e3, "99": point.p99_us / 1e3}
    generator = f"perf_analyzer -i {protocol} --shared-memory {kind} --concurrency-range " \
                f"{concurrency}"
    # perf_analyzer counts images (inferences), the Outcome requests; the rate is over its
    # measured windows, the CPU over its whole run.
    return Outcome(generator, round(point.rate / rows * point.seconds), point.seconds, latency,
                   0, "", 0.0, server)
