"""The inputs an export is calibrated and verified on: .npz files, or generated from a signature."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.datatypes import NUMPY_DTYPES
from common.model_config import TensorSpec
from tensorgate.edge.source import EdgeError

LABEL_KEYS = ("labels", "y")
_SINGLE_INPUT_KEYS = ("x", "inputs")


@dataclass(frozen=True)
class SampleSet:
    """Samples along axis 0 of every input, with labels when the file had them."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    origin: str

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, count: int) -> SampleSet:
        labels = None if self.labels is None else self.labels[:count]
        return SampleSet({k: v[:count] for k, v in self.inputs.items()}, labels, self.origin)


def _fits(shape: tuple[int, ...], spec: tuple[int, ...]) -> bool:
    return len(shape) == len(spec) and all(d == s or s < 0 for d, s in zip(shape, spec))


def _pick(archive: np.lib.npyio.NpzFile, spec: TensorSpec, single: bool, path: Path) -> np.ndarray:
    keys = [spec.name, *(_SINGLE_INPUT_KEYS if single else ())]
    key = next((k for k in keys if k in archive.files), None)
    if key is None:
        raise EdgeError(f"{path}: no array for input {spec.name!r} (expected a key named "
                        f"{' or '.join(map(repr, keys))}; the file has {archive.files})")
    array = archive[key]
    if not _fits(array.shape[1:], spec.shape):
        raise EdgeError(f"{path}: array {key!r} has shape {list(array.shape)}; expected "
                        f"[samples, {', '.join(map(str, spec.shape))}] for input {spec.name!r}")
    return array.astype(NUMPY_DTYPES[spec.datatype], copy=False)


def load_npz(path: Path, specs: tuple[TensorSpec, ...], need_labels: bool) -> SampleSet:
    """Arrays named after the inputs (or `x` for a one-input model), labels under `labels`/`y`."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EdgeError(f"cannot read {path}: {exc} (expected a .npz from numpy.savez)") from None
    with archive:
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise EdgeError(f"{path}: expected a .npz archive of named arrays, not a single array")
        inputs = {s.name: _pick(archive, s, len(specs) == 1, path) for s in specs}
        label_key = next((k for k in LABEL_KEYS if k in archive.files), None)
        labels = None if label_key is None else archive[label_key].astype(np.int64).ravel()
    counts = {len(a) for a in inputs.values()} | ({len(labels)} if labels is not None else set())
    if len(counts) != 1 or 0 in counts:
        raise EdgeError(f"{path}: the arrays hold different or zero sample counts {sorted(counts)};"
                        " expected the same number of samples in each")
    if need_labels and labels is None:
        raise EdgeError(f"{path}: no labels (expected an integer array named "
                        f"{' or '.join(map(repr, LABEL_KEYS))} beside the inputs)")
    return SampleSet(inputs, labels, path.name)


def generate(specs: tuple[TensorSpec, ...], count: int, seed: int = 0) -> SampleSet:
    """Inputs drawn from the signature: floats uniform in [0, 1), integers in [0, 10)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in specs:
        shape = (count, *(max(d, 1) for d in spec.shape))
        dtype = NUMPY_DTYPES.get(spec.datatype)
        if dtype is None or dtype.kind not in "fiub":
            raise EdgeError(f"input {spec.name!r} is {spec.datatype}: inputs of that type cannot "
                            "be generated; give samples with --calibration or --eval")
        values = rng.random(shape) if dtype.kind == "f" else rng.integers(0, 10, shape)
        inputs[spec.name] = values.astype(dtype)
    return SampleSet(inputs, None, f"generated from the signature (seed {seed})")
