"""A runtime worker that also serves `sleepy`, a Python backend that sleeps: for fault tests only.

    python -m loadtest.sleepy --lane unix:PATH [--delay 0.2] [--instances 1] [--drain-timeout S]

`sleepy` doubles its FP32 input [4] (no batching) after `--delay` seconds; a negative delay hangs
until the process stops. It is registered here, never in the runtime's backend table.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

import numpy as np

from common.model_config import DynamicBatching, ModelConfig, TensorSpec
from common.settings import RuntimeSettings
from runtime.backends.base import Backend
from runtime.model import ModelStore, ServedModel

ROOT = Path(__file__).resolve().parents[1]
SPEC = TensorSpec("INPUT0", "FP32", (4,))
OUTPUT = TensorSpec("OUTPUT0", "FP32", (4,))


class SleepyBackend:
    """Sleeps, then doubles its input; `release` ends every sleep (a test's teardown)."""

    platform = "python"
    backend_name = "sleepy"
    device = "cpu"
    inputs: tuple[TensorSpec, ...] = (SPEC,)
    outputs: tuple[TensorSpec, ...] = (OUTPUT,)

    def __init__(self, delay: float, release: threading.Event) -> None:
        self.delay = delay
        self.release = release

    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        # NOTE: an Event wait, not time.sleep: a hung call must end when the test does, or the
        # interpreter's exit would wait for the executor thread.
        self.release.wait(None if self.delay < 0 else self.delay)
        return [feeds[0] * 2]


def sleepy_model(delay: float, instances: int = 1, release: threading.Event | None = None,
                 name: str = "sleepy", max_queue_size: int = 1024) -> ServedModel:
    """The model, ready for a ModelStore; warm-up is skipped (it would sleep too)."""
    release = release or threading.Event()
    config = ModelConfig(name=name, source=Path("<sleepy>"), max_batch_size=0,
                         dynamic_batching=DynamicBatching(max_queue_size=max_queue_size),
                         instance_count=instances, device="cpu", inputs=(SPEC,),
                         outputs=(OUTPUT,))
    backends: list[Backend] = [SleepyBackend(delay, release) for _ in range(instances)]
    # NOTE: an infinite warm-up time keeps it off the event loop (see Scheduler.inline).
    return ServedModel(config, 1, backends, warmup_ns=float("inf"))


def store_with(settings: RuntimeSettings, *models: ServedModel) -> ModelStore:
    """The repository's models, loaded as the runtime loads them, and `models` beside them."""
    from runtime.app import load_models

    store = load_models(settings)
    for model in models:
        store.add(model)
    return store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--lane", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    from tensorgate.roles import run_runtime

    settings = RuntimeSettings(model_repository=args.model_repository, listen=args.listen,
                               lane=args.lane, threads=args.threads,
                               drain_timeout_s=args.drain_timeout)
    release = threading.Event()
    try:
        return run_runtime(settings, store_with(settings, sleepy_model(
            args.delay, args.instances, release)))
    finally:
        release.set()  # a hung call returns, so the interpreter's exit need not wait for it


if __name__ == "__main__":
    sys.exit(main())
