"""The benchmarked model alone on its device: PyTorch, the input already there, the best memory
format (channels_last with cuDNN's autotuner on a GPU), no serving and no copies.

The weights are build_resnet's, so it is the very model either backend serves: the rate every
served path is divided by.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from loadtest.cases import BatchPoint


def device_alone(model: str, size: int, precision: str, device: str, batch: int,
                 threads: int, seconds: float) -> BatchPoint:
    """Back-to-back batches of `batch` rows for `seconds`, each call waited for."""
    import torch

    from loadtest.build_resnet_torch import make_torch_model
    from runtime.backends.torch import configure_threads

    configure_threads(threads)
    half = precision == "fp16"
    where = torch.device(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript's own
        module = make_torch_model(model, size, half).to(where)
    if where.type == "cuda":
        torch.backends.cudnn.benchmark = True
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.rand((batch, 3 * size * size), device=where,
                   dtype=torch.float16 if half else torch.float32)

    def wait() -> None:
        if where.type == "cuda":
            torch.cuda.synchronize(where)

    latencies = []
    with torch.inference_mode():
        for _ in range(5):
            module(x)
        wait()
        start = time.perf_counter_ns()
        end = start + int(seconds * 1e9)
        while (t0 := time.perf_counter_ns()) < end:
            module(x)
            wait()
            latencies.append(time.perf_counter_ns() - t0)
        elapsed = (time.perf_counter_ns() - start) / 1e9
    ns = np.asarray(latencies)
    return BatchPoint(batch, batch * len(ns) / elapsed, float(np.percentile(ns, 50)) / 1e6,
                      float(np.percentile(ns, 99)) / 1e6)
