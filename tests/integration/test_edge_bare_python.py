"""A bundle on a bare Python: a fresh venv holding only onnxruntime and numpy runs its run.py."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tensorgate.edge.pipeline import ExportOptions, export_bundle
from tensorgate.edge.source import find_source
from tests.edge_data import MODELS, SERVED_ACCURACY, write_digits_files, write_keys


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with onnxruntime and numpy from the package index; skipped if it cannot be built."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    python = venv / "bin" / "python"
    steps = [[sys.executable, "-m", "venv", "--without-pip", str(venv)],
             # NOTE: this venv's pip installs into the new one; bootstrapping a pip there doubles
             # the time and adds nothing to what is tested.
             [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
              "--disable-pip-version-check", "onnxruntime", "numpy"]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=240, check=False)
        except subprocess.TimeoutExpired:
            pytest.skip(f"could not build a bare venv: {' '.join(step[:4])} timed out")
        if done.returncode != 0:
            pytest.skip(f"could not build a bare venv (no package index?): {done.stderr[-400:]}")
    return python


def test_bundle_runs_on_a_bare_python(bare_python: Path, tmp_path: Path) -> None:
    calibration, heldout = write_digits_files(tmp_path)
    private, public = write_keys(tmp_path)
    options = ExportOptions(target="onnx-int8", calibration=calibration, eval=heldout,
                            sign_key=private, latency_iterations=5, progress=False)
    archive, _ = export_bundle(find_source(MODELS, "digits", 2), options,
                               tmp_path / "digits-2-onnx-int8.tar.gz")
    device = tmp_path / "device"
    with tarfile.open(archive) as handle:
        handle.extractall(device, filter="data")
    script = device / "digits-2-onnx-int8" / "run.py"
    python = [str(bare_python), "-I"]  # -I: no user site, no PYTHONPATH, no cwd on sys.path
    isolated = subprocess.run([*python, "-c", "import torch"], capture_output=True, cwd=device,
                              check=False)
    assert isolated.returncode != 0  # torch is out of reach, and tensorgate with it
    ran = subprocess.run([*python, str(script), "run", "--input", str(heldout), "--output",
                          str(tmp_path / "out.npy"), "--public-key", str(public)],
                         capture_output=True, text=True, cwd=device, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert "digits:2 onnx-int8 (model.onnx), signature verified" in ran.stderr
    with np.load(heldout) as data:
        labels = data["labels"]
    accuracy = float(np.mean(np.load(tmp_path / "out.npy").argmax(axis=1) == labels))
    assert abs(accuracy - SERVED_ACCURACY[2]) <= 0.01
    timed = subprocess.run([*python, str(script), "bench", "--iterations", "3"],
                           capture_output=True, text=True, cwd=device, timeout=60, check=False)
    assert timed.returncode == 0, timed.stderr
    assert [line.split()[0] for line in timed.stdout.splitlines()[1:]] == ["1", "32"]
    model = script.parent / "model.onnx"
    data = model.read_bytes()
    model.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    tampered = subprocess.run([*python, str(script), "run", "--input", str(heldout)],
                              capture_output=True, text=True, cwd=device, timeout=60, check=False)
    assert tampered.returncode == 1 and "checksum mismatch for 'model.onnx'" in tampered.stderr
