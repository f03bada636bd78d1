"""Verification figures and thresholds, sample files and model references, without a model."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from common.model_config import TensorSpec
from tensorgate.edge.pipeline import ExportOptions
from tensorgate.edge.samples import SampleSet, generate, load_npz
from tensorgate.edge.source import EdgeError, parse_ref
from tensorgate.edge.verify import Thresholds, check, compare

SPECS = (TensorSpec("INPUT0", "FP32", (4,)),)


def probabilities(rows: list[list[float]]) -> list[np.ndarray]:
    return [np.array(rows, dtype=np.float32)]


def labelled(labels: list[int]) -> SampleSet:
    return SampleSet({"INPUT0": np.zeros((len(labels), 4), np.float32)}, np.array(labels), "t")


def test_figures_of_a_close_export() -> None:
    before = probabilities([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    after = probabilities([[0.8, 0.2], [0.25, 0.75], [0.4, 0.6]])
    figures = compare(before, after, labelled([0, 1, 0]))
    assert figures.max_abs_err == pytest.approx(0.2)
    assert figures.mean_abs_err == pytest.approx((0.1 * 2 + 0.05 * 2 + 0.2 * 2) / 6)
    assert figures.top1_agreement == pytest.approx(2 / 3)
    assert (figures.accuracy_before, figures.accuracy_after) == (1.0, pytest.approx(2 / 3))


def test_thresholds_fail_with_every_reason() -> None:
    figures = compare(probabilities([[0.9, 0.1], [0.2, 0.8]]),
                      probabilities([[0.1, 0.9], [0.2, 0.8]]), labelled([0, 1]))
    with pytest.raises(EdgeError) as caught:
        check(figures, Thresholds(0.5, 0.99, max_accuracy_drop=1.0), "digits:1 → onnx-int8")
    message = caught.value.message
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "digits:1 → onnx-int8 failed verification on 2 samples" in message
    assert "max abs error 0.8 exceeds --max-abs-err 0.5" in message
    assert "top-1 agreement 50.00% is below --min-agreement 0.99" in message
    assert "accuracy fell 50.00 points (100.00% → 50.00%)" in message
    check(figures, Thresholds(0.8, 0.5, max_accuracy_drop=50.0), "fine")


def test_nan_outputs_fail_any_threshold() -> None:
    figures = compare(probabilities([[0.5, 0.5]]), probabilities([[np.nan, np.nan]]),
                      labelled([0]))
    assert figures.max_abs_err == float("inf")
    with pytest.raises(EdgeError, match="max abs error inf exceeds"):
        check(figures, Thresholds(1e9, 0.0), "x")


def test_shape_change_is_refused() -> None:
    with pytest.raises(EdgeError, match=r"outputs \[\[1, 3\]\] differ in shape"):
        compare(probabilities([[0.5, 0.5]]), probabilities([[0.3, 0.3, 0.4]]), labelled([0]))


def test_regression_outputs_have_no_agreement() -> None:
    figures = compare([np.array([1.0, 2.0])], [np.array([1.0, 2.5])], labelled([0, 1]))
    assert figures.top1_agreement is None and figures.max_abs_err == 0.5
    check(figures, Thresholds(0.5, 1.0), "regression")  # agreement is not asked of it


def test_sample_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "ok.npz", x=np.ones((5, 4)), labels=np.arange(5))
    loaded = load_npz(tmp_path / "ok.npz", SPECS, need_labels=True)
    assert loaded.count == 5 and loaded.inputs["INPUT0"].dtype == np.float32
    np.savez(tmp_path / "wrong.npz", INPUT0=np.ones((5, 3)))
    with pytest.raises(EdgeError, match=r"shape \[5, 3\]; expected \[samples, 4\]"):
        load_npz(tmp_path / "wrong.npz", SPECS, need_labels=False)
    np.savez(tmp_path / "unlabelled.npz", INPUT0=np.ones((5, 4)))
    with pytest.raises(EdgeError, match="no labels"):
        load_npz(tmp_path / "unlabelled.npz", SPECS, need_labels=True)
    np.savez(tmp_path / "other.npz", IMAGE=np.ones((5, 4)))
    with pytest.raises(EdgeError, match=r"no array for input 'INPUT0'.*\['IMAGE'\]"):
        load_npz(tmp_path / "other.npz", SPECS, need_labels=False)
    np.savez(tmp_path / "ragged.npz", INPUT0=np.ones((5, 4)), labels=np.arange(4))
    with pytest.raises(EdgeError, match="different or zero sample counts"):
        load_npz(tmp_path / "ragged.npz", SPECS, need_labels=True)


def test_generated_samples_follow_the_signature() -> None:
    specs = (*SPECS, TensorSpec("IDS", "INT64", (-1,)))
    samples = generate(specs, 7)
    assert samples.inputs["INPUT0"].shape == (7, 4) and samples.inputs["IDS"].shape == (7, 1)
    assert samples.inputs["IDS"].dtype == np.int64
    assert np.array_equal(generate(specs, 7).inputs["INPUT0"], samples.inputs["INPUT0"])


def test_model_references_and_targets() -> None:
    assert parse_ref("digits") == ("digits", None)
    assert parse_ref("digits:2") == ("digits", 2)
    with pytest.raises(EdgeError, match="expected MODEL or MODEL:VERSION"):
        parse_ref("digits:two")
    assert ExportOptions(target="onnx-int8").thresholds() == Thresholds(0.5, 0.97)
    assert ExportOptions(target="onnx", max_abs_err=0.5).thresholds().max_abs_err == 0.5
    with pytest.raises(EdgeError, match="unknown target 'tflite'"):
        ExportOptions(target="tflite").thresholds()
