"""`tensorgate edge` as a user runs it: export, sign, run, bench, refusals, audit and the cache."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from common.registry import Registry
from tensorgate.cli import main
from tensorgate.edge.cache import bundle_for
from tensorgate.edge.source import EdgeError
from tests.edge_data import (
    MODELS,
    digits_split,
    outlier_repository,
    write_digits_files,
    write_keys,
)


def tg(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_sign_run_bench_and_audit(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    calibration, heldout = write_digits_files(tmp_path)
    private, public = write_keys(tmp_path)
    db, out = tmp_path / "tensorgate.db", tmp_path / "digits-1-int8.tar.gz"
    code, printed, err = tg(capsys, "edge", "export", "digits:1", "--target", "onnx-int8",
                            "--out", str(out), "--calibration", str(calibration), "--eval",
                            str(heldout), "--sign-key", str(private), "--registry", str(db),
                            "--model-repository", str(MODELS))
    assert code == 0, err
    assert "verified on 450 samples (heldout.npz)" in printed
    assert "accuracy: served 98.00% → exported" in printed and f"wrote {out}" in printed
    _, x_test, _, y_test = digits_split()
    np.save(tmp_path / "one.npy", x_test[0])
    code, printed, err = tg(capsys, "edge", "run", str(out), "--input", str(tmp_path / "one.npy"),
                            "--public-key", str(public))
    assert code == 0, err
    assert "signature verified" in err
    assert int(np.argmax(json.loads(printed)["OUTPUT0"][0])) == y_test[0]
    code, printed, err = tg(capsys, "edge", "bench", str(out), "--iterations", "3",
                            "--batch", "4")
    assert code == 0, err
    assert printed.splitlines()[0].split() == ["batch", "p50", "ms", "p90", "ms", "samples/s"]
    assert printed.splitlines()[1].split()[0] == "4"
    with Registry(db) as registry:
        entry = registry.audit_log("digits")[0]
    assert (entry.action, entry.target, entry.after["status"]) == ("edge.export", "digits:1", "ok")
    assert entry.after["target"] == "onnx-int8" and entry.after["out"] == str(out.resolve())
    assert entry.after["verification"]["samples"] == 450


def test_tampered_bundle_fails_in_edge_run(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    private, public = write_keys(tmp_path)
    out = tmp_path / "bundle"
    code, _, err = tg(capsys, "edge", "export", "digits:1", "--target", "onnx", "--out",
                      str(out), "--sign-key", str(private), "--samples", "16", "--registry",
                      str(tmp_path / "db"), "--model-repository", str(MODELS))
    assert code == 0, err
    np.save(tmp_path / "x.npy", np.zeros(64, np.float32))
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    model = bytearray((changed / "model.onnx").read_bytes())
    model[-5] ^= 0x01
    (changed / "model.onnx").write_bytes(bytes(model))
    code, printed, err = tg(capsys, "edge", "run", str(changed), "--input",
                            str(tmp_path / "x.npy"))
    assert code == 1 and printed == ""
    assert "checksum mismatch for 'model.onnx'" in err and "Traceback" not in err
    resigned = tmp_path / "resigned"
    shutil.copytree(out, resigned)
    manifest = json.loads((resigned / "manifest.json").read_text())
    manifest["preprocessing"] = "pixels scaled to [0, 255]"
    (resigned / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = tg(capsys, "edge", "run", str(resigned), "--input", str(tmp_path / "x.npy"),
                      "--public-key", str(public))
    assert code == 1 and "the signature does not match manifest.json" in err


def test_broken_model_fails_the_threshold(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`outlier` is broken for int8: the export is refused with its figures, nothing written."""
    repo, db, out = outlier_repository(tmp_path), tmp_path / "db", tmp_path / "outlier.tar.gz"
    code, printed, err = tg(capsys, "edge", "export", "outlier", "--target", "onnx-int8",
                            "--out", str(out), "--samples", "32", "--model-repository",
                            str(repo), "--registry", str(db))
    assert code == 1 and printed == "" and not out.exists()
    assert ("tensorgate edge: outlier:1 → onnx-int8 failed verification on 32 samples "
            "(generated from the signature (seed 0)): max abs error ") in err
    assert "exceeds --max-abs-err 0.5" in err
    assert "is below --min-agreement 0.97; nothing was written" in err
    assert "Traceback" not in err and list(tmp_path.glob("*.tmp")) == []
    with Registry(db) as registry:
        entry = registry.audit_log("outlier")[0]
    assert entry.after["status"] == "failed" and "top-1 agreement" in entry.after["error"]
    code, _, err = tg(capsys, "edge", "export", "outlier", "--target", "onnx", "--out",
                      str(out), "--samples", "32", "--model-repository", str(repo),
                      "--registry", str(db))
    assert code == 0, err  # the float32 model itself is fine: int8 broke it


def test_user_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ("--registry", str(tmp_path / "db"), "--model-repository", str(MODELS))
    code, _, err = tg(capsys, "edge", "export", "digits:9", "--target", "onnx", "--out",
                      str(tmp_path / "b"), *common)
    assert code == 1 and "model 'digits' has no version 9" in err and "[1, 2]" in err
    code, _, err = tg(capsys, "edge", "export", "digits:1", "--target", "onnx", "--out",
                      str(tmp_path / "b"), "--eval", str(tmp_path / "absent.npz"), *common)
    assert code == 1 and "absent.npz" in err and "expected a .npz" in err
    code, _, err = tg(capsys, "edge", "export", "digits:1", "--target", "onnx", "--out",
                      str(tmp_path / "b"), "--sign-key", str(MODELS / "digits" / "config.yaml"),
                      *common)
    assert code == 1 and "expected an unencrypted Ed25519 private key" in err
    assert not (tmp_path / "b").exists()


def test_cache_builds_once_per_source_and_target(tmp_path: Path) -> None:
    db, cache = tmp_path / "db", tmp_path / "cache"
    paths: list[Path] = []

    def fetch() -> None:
        paths.append(bundle_for(MODELS, "digits", 1, "onnx-int8", cache, registry=db))

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(paths)) == 1 and paths[0].name.startswith("digits-1-onnx-int8-")
    assert paths[0].name.endswith(".tar.gz") and paths[0].parent == cache
    built_at = paths[0].stat().st_mtime_ns
    assert bundle_for(MODELS, "digits", 1, "onnx-int8", cache, registry=db) == paths[0]
    assert paths[0].stat().st_mtime_ns == built_at
    assert sorted(p.name for p in cache.iterdir()) == [paths[0].name]  # no temporary left
    with Registry(db) as registry:
        assert len(registry.audit_log("digits")) == 1
    with pytest.raises(EdgeError) as missing:
        bundle_for(MODELS, "digits", 7, "onnx", cache)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(EdgeError) as unknown:
        bundle_for(MODELS, "digits", 1, "tflite", cache)
    assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT
