"""Stage three of an edge export: run the exported and the served model on the same inputs, compare.

Figures: max and mean absolute error over every output element, top-1 agreement for classifiers,
accuracy before and after with labels; thresholds turn a bad export into a clear refusal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from tensorgate.edge.samples import SampleSet
from tensorgate.edge.source import EdgeError

Run = Callable[[list[np.ndarray]], list[np.ndarray]]
CHUNK = 64
# (max abs error, min top-1 agreement) when the command line does not say. NOTE: static int8
# moves the probabilities of near-tie samples by tenths (0.06-0.46 on digits), so for int8 the
# error bound only catches a broken model; agreement and accuracy are the gates that matter.
DEFAULT_THRESHOLDS = {"onnx": (1e-4, 0.99), "ort": (1e-4, 0.99), "onnx-fp16": (1e-2, 0.98),
                      "onnx-int8": (0.5, 0.97)}
_ORT_DTYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32,
               "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
               "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class Thresholds:
    max_abs_err: float
    min_agreement: float
    max_accuracy_drop: float | None = None  # in percentage points


@dataclass(frozen=True)
class Figures:
    samples: int
    inputs_from: str
    max_abs_err: float
    mean_abs_err: float
    top1_agreement: float | None
    accuracy_before: float | None
    accuracy_after: float | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def session_runner(session: ort.InferenceSession) -> Run:
    """Feed a session in input order, cast to the types it declares (float16 when asked)."""
    names = [i.name for i in session.get_inputs()]
    dtypes = [_ORT_DTYPES.get(i.type) for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]

    def run(feeds: list[np.ndarray]) -> list[np.ndarray]:
        cast = {n: a if t is None else a.astype(t, copy=False)
                for n, a, t in zip(names, feeds, dtypes)}
        return [np.asarray(r) for r in session.run(outputs, cast)]
    return run


def run_all(run: Run, samples: SampleSet, batched: bool, label: str,
            progress: bool | None) -> list[np.ndarray]:
    """Every sample through `run`, in chunks when the model batches, one at a time when not."""
    arrays = list(samples.inputs.values())
    step = CHUNK if batched else 1
    parts: list[list[np.ndarray]] = []
    hide = None if progress is None else not progress
    with tqdm(total=samples.count, desc=label, unit="sample", disable=hide, leave=False) as bar:
        for start in range(0, samples.count, step):
            feeds = [a[start:start + step] if batched else a[start] for a in arrays]
            result = run(feeds)
            parts.append([r if batched else r[np.newaxis] for r in result])
            bar.update(step)
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _classifier(outputs: list[np.ndarray]) -> bool:
    first = outputs[0]
    return first.ndim == 2 and first.shape[1] > 1


def compare(before: list[np.ndarray], after: list[np.ndarray], samples: SampleSet) -> Figures:
    """The error and agreement figures of `after` (exported) against `before` (served)."""
    if len(before) != len(after) or any(b.shape != a.shape for b, a in zip(before, after)):
        raise EdgeError(f"the exported model's outputs {[list(a.shape) for a in after]} differ "
                        f"in shape from the served model's {[list(b.shape) for b in before]}",
                        grpc.StatusCode.FAILED_PRECONDITION)
    errors = np.concatenate([np.abs(b.astype(np.float64) - a.astype(np.float64)).ravel()
                             for b, a in zip(before, after)])
    agreement = accuracy_before = accuracy_after = None
    if _classifier(before):
        top_before, top_after = before[0].argmax(axis=1), after[0].argmax(axis=1)
        agreement = float(np.mean(top_before == top_after))
        if samples.labels is not None:
            accuracy_before = float(np.mean(top_before == samples.labels))
            accuracy_after = float(np.mean(top_after == samples.labels))
    # NOTE: nan (an overflow in float16, say) must fail the threshold, and nan > x is False.
    finite = bool(np.isfinite(errors).all())
    return Figures(samples=samples.count, inputs_from=samples.origin,
                   max_abs_err=float(errors.max()) if finite else float("inf"),
                   mean_abs_err=float(errors.mean()) if finite else float("inf"),
                   top1_agreement=agreement, accuracy_before=accuracy_before,
                   accuracy_after=accuracy_after)


def check(figures: Figures, limits: Thresholds, what: str) -> None:
    """Raise with every threshold the figures miss, so one run names all the problems."""
    failed = []
    if not figures.max_abs_err <= limits.max_abs_err:
        failed.append(f"max abs error {figures.max_abs_err:.3g} exceeds --max-abs-err "
                      f"{limits.max_abs_err:g}")
    if figures.top1_agreement is not None and figures.top1_agreement < limits.min_agreement:
        failed.append(f"top-1 agreement {figures.top1_agreement:.2%} is below --min-agreement "
                      f"{limits.min_agreement:g}")
    if (limits.max_accuracy_drop is not None and figures.accuracy_before is not None
            and figures.accuracy_after is not None):
        drop = (figures.accuracy_before - figures.accuracy_after) * 100
        if drop > limits.max_accuracy_drop:
            failed.append(f"accuracy fell {drop:.2f} points ({figures.accuracy_before:.2%} → "
                          f"{figures.accuracy_after:.2%}), more than --max-accuracy-drop "
                          f"{limits.max_accuracy_drop:g}")
    if failed:
        raise EdgeError(f"{what} failed verification on {figures.samples} samples "
                        f"({figures.inputs_from}): {'; '.join(failed)}; nothing was written",
                        grpc.StatusCode.FAILED_PRECONDITION)


def latency_p50_ms(run: Run, samples: SampleSet, batched: bool, iterations: int) -> float:
    """The median latency of one single-sample call, after a warm-up call."""
    feeds = [a[:1] if batched else a[0] for a in samples.inputs.values()]
    run(feeds)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)
