"""GPU utilisation over a served run, from NVML (nvidia-ml-py): sampled in a thread while the
run goes; nothing where NVML or the GPU is absent."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

#: Seconds between samples; NVML's own figure is the share of its last sample period
#: (1/6 s to 1 s by GPU) in which a kernel ran.
PERIOD_S = 0.1


def _handle(index: int) -> Any:
    """NVML's handle of GPU ``index``, or None where NVML or that GPU is not there."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # NVML raises its own error types, and ImportError without the package
        return None


def gpu_index(device: str) -> int | None:
    """The GPU a model's ``device`` names (``cuda`` is 0, ``cuda:N`` is N); None for others."""
    kind, _, number = device.partition(":")
    if kind != "cuda":
        return None
    return int(number) if number.isdigit() else 0


class Utilisation:
    """``with Utilisation(device) as gpu: ...`` then ``gpu.mean()``: the mean of NVML's GPU
    utilisation (%) over the block, or None where it could not be read."""

    def __init__(self, device: str) -> None:
        index = gpu_index(device)
        self._handle = _handle(index) if index is not None else None
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Utilisation:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._sample, name="nvml-sampler",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _sample(self) -> None:
        import pynvml

        while not self._stop.wait(PERIOD_S):
            try:
                self._samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            except pynvml.NVMLError:
                return

    @property
    def available(self) -> bool:
        """Whether NVML answered for the GPU asked for."""
        return self._handle is not None

    def mean(self) -> float | None:
        return sum(self._samples) / len(self._samples) if self._samples else None
