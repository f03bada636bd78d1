"""Every edge target for both digits versions: verified, smaller, as accurate as served."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tensorgate.edge import runner
from tensorgate.edge.pipeline import ExportOptions, export_bundle
from tensorgate.edge.source import TARGETS, find_source
from tensorgate.edge.verify import DEFAULT_THRESHOLDS
from tests.edge_data import MODELS, SERVED_ACCURACY, digits_split, write_digits_files

Exports = dict[tuple[int, str], tuple[Path, dict[str, Any]]]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    """Each (version, target) exported once, calibrated on training rows, checked on held-out."""
    folder = tmp_path_factory.mktemp("edge")
    calibration, heldout = write_digits_files(folder)
    built: Exports = {}
    for version, target in itertools.product((1, 2), TARGETS):
        options = ExportOptions(target=target, calibration=calibration, eval=heldout,
                                latency_iterations=5, progress=False)
        out = folder / f"digits-{version}-{target}"
        built[version, target] = export_bundle(find_source(MODELS, "digits", version), options,
                                               out)
    return built


@pytest.mark.parametrize(("version", "target"), list(itertools.product((1, 2), TARGETS)))
def test_figures_within_thresholds(exports: Exports, version: int, target: str) -> None:
    path, manifest = exports[version, target]
    figures = manifest["verification"]
    max_err, min_agreement = DEFAULT_THRESHOLDS[target]
    assert figures["samples"] == 450 and figures["inputs_from"] == "heldout.npz"
    assert 0 <= figures["mean_abs_err"] <= figures["max_abs_err"] <= max_err
    assert figures["top1_agreement"] >= min_agreement
    assert figures["accuracy_before"] == pytest.approx(SERVED_ACCURACY[version])
    assert abs(figures["accuracy_after"] - figures["accuracy_before"]) <= 0.01
    assert json.loads((path / "manifest.json").read_text()) == manifest


@pytest.mark.parametrize(("version", "target"), list(itertools.product((1, 2), TARGETS)))
def test_bundle_alone_matches_served_accuracy(exports: Exports, version: int,
                                              target: str) -> None:
    """The bundle as a device runs it (runner only), on the held-out split."""
    path, _ = exports[version, target]
    bundle = runner.open_bundle(path)
    _, x_test, _, y_test = digits_split()
    outputs = runner.infer(bundle, {"INPUT0": x_test}, threads=1)
    accuracy = float(np.mean(outputs["OUTPUT0"].argmax(axis=1) == y_test))
    assert outputs["OUTPUT0"].dtype == np.float32 and outputs["OUTPUT0"].shape == (450, 10)
    assert abs(accuracy - SERVED_ACCURACY[version]) <= 0.01
    single = runner.infer(bundle, {"INPUT0": x_test[:1]}, threads=1)["OUTPUT0"]
    assert single.shape == (1, 10)  # the batch axis stayed dynamic


@pytest.mark.parametrize("version", [1, 2])
def test_int8_at_least_twice_smaller_and_fp16_half(exports: Exports, version: int) -> None:
    fp32 = (exports[version, "onnx"][0] / "model.onnx").stat().st_size
    int8 = (exports[version, "onnx-int8"][0] / "model.onnx").stat().st_size
    fp16 = (exports[version, "onnx-fp16"][0] / "model.onnx").stat().st_size
    assert int8 * 2 <= fp32
    assert fp16 < fp32 * 0.6
    manifest = exports[version, "onnx-int8"][1]
    assert manifest["size"]["after_bytes"] == int8
    assert manifest["size"]["fp32_onnx_bytes"] == fp32
    assert manifest["conversion"]["quantization"]["mode"] == "static"
    assert manifest["conversion"]["quantization"]["calibration_samples"] == 128


@pytest.mark.parametrize("version", [1, 2])
def test_manifest_describes_the_source_and_every_file(exports: Exports, version: int) -> None:
    path, manifest = exports[version, "ort"]
    source = find_source(MODELS, "digits", version)
    assert manifest["source"] == {"version": version, "backend": source.backend,
                                  "file": source.artifact.name, "sha256": source.sha256,
                                  "size_bytes": source.artifact.stat().st_size}
    assert manifest["name"] == "digits" and manifest["target"] == "ort"
    assert manifest["model_file"] == "model.ort" and manifest["opset"] == 17
    assert manifest["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 64]}]
    assert manifest["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 10]}]
    assert "8x8 pixels scaled to [0, 1]" in manifest["preprocessing"]
    assert set(manifest["files"]) == {"model.ort", "required_operators.config", "run.py"}
    operators = (path / "required_operators.config").read_text()
    assert "ai.onnx;" in operators and "Softmax" in operators
    assert manifest["latency_ms"]["before_p50"] > 0 and manifest["latency_ms"]["after_p50"] > 0
    assert manifest["created_by"]["tool"].startswith("tensorgate")
    assert manifest["created_at"].endswith("Z")
    for name, entry in manifest["files"].items():
        assert entry["size_bytes"] == (path / name).stat().st_size
