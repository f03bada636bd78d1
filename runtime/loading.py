"""Loading one model version: its backends with their thread share, a warm-up, a validation.

Blocking: the runtime calls it at start-up and, for reloads, from a worker thread.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from common.datatypes import NUMPY_DTYPES
from runtime import metrics as runtime_metrics
from runtime.backends import load_backend
from runtime.backends.base import Backend
from runtime.classify import check_labels
from runtime.model import ServedModel
from runtime.repository import VersionSource
from runtime.warmup import validate

log = logging.getLogger("tensorgate.runtime")


def intra_op_threads(threads: int, instances: int) -> int:
    """Compute threads per model instance: the worker's threads shared between its instances.

    No core is held back for the event loop: while a batch computes, the loop has little to do
    (with spinning off, idle compute threads sleep), while on a machine of few cores a core
    held back is a large share of the compute a compute-heavy model could use.
    """
    return max(1, threads // instances)


def stamp(path: os.PathLike[str] | str) -> tuple[int, int, int]:
    """What tells a replaced artifact from a loaded one: inode, size, modification time."""
    info = os.stat(path)
    return info.st_ino, info.st_size, info.st_mtime_ns


def warm_up(backend: Backend, max_batch_size: int) -> float:
    """Run a full batch of zeros a few times, so no caller pays for lazy initialisation.

    Returns the fastest run in ns; infinite when the signature gives no shape to run.
    """
    feeds = []
    for spec in backend.inputs:
        if spec.datatype not in NUMPY_DTYPES or spec.datatype == "BYTES" or -1 in spec.shape:
            return float("inf")
        shape = (max_batch_size, *spec.shape) if max_batch_size else spec.shape
        feeds.append(np.zeros(shape, NUMPY_DTYPES[spec.datatype]))
    fastest = float("inf")
    for _ in range(3):
        started = time.perf_counter_ns()
        backend.run(feeds)
        fastest = min(fastest, time.perf_counter_ns() - started)
    return fastest


def load_version(source: VersionSource, threads: int, metrics: runtime_metrics.RuntimeMetrics,
                 check: bool = False) -> ServedModel:
    """Load, warm up and (with `check`) validate one version; its load time and state are
    recorded. Raises ConfigError or runtime.warmup.ValidationError."""
    name, version = source.config.name, str(source.version)
    metrics.set_state(name, version, "LOADING")
    started = time.perf_counter()
    count = source.config.instance_count
    share = intra_op_threads(threads, count)
    try:
        backends = [load_backend(source.backend, source.artifact, source.config, share,
                                 quiet=index > 0) for index in range(count)]
        check_labels(name, backends[0].outputs, source.config.labels)
        if check:
            validate(backends[0], source.config)
        warmup_ns = min(warm_up(b, source.config.max_batch_size) for b in backends)
    except BaseException:
        metrics.set_state(name, version, "UNAVAILABLE")
        raise
    model = ServedModel(source.config, source.version, backends, warmup_ns,
                        stamp=stamp(source.artifact))
    seconds = time.perf_counter() - started
    metrics.load_time.labels(name, version).set(seconds)
    metrics.set_state(name, version, "READY")
    log.info("loaded %s version %s (%s on %s, %d instance(s)) in %.2fs", name, version,
             source.backend, backends[0].device, count, seconds)
    return model
