"""The bundle runner alone: Ed25519 in pure Python, checksums, signatures, inputs, its imports."""

from __future__ import annotations

import ast
import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tensorgate.edge import bundle, runner
from tests.edge_data import MODELS, write_keys

SIGNATURE = [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 64]}]


def make_bundle(out: Path, key_file: Path | None = None) -> Path:
    """A directory bundle of digits v1, sealed as the exporter seals one."""
    manifest = {"name": "digits", "target": "onnx", "model_file": "model.onnx",
                "source": {"version": 1}, "inputs": SIGNATURE,
                "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 10]}]}
    key = None if key_file is None else bundle.load_signing_key(key_file)
    files = {"model.onnx": (MODELS / "digits" / "1" / "model.onnx").read_bytes()}
    return bundle.write(out, bundle.seal(files, manifest, key))


@pytest.mark.parametrize("length", [0, 1, 100, 4096])
def test_ed25519_matches_cryptography(length: int) -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    message = bytes(range(256)) * (length // 256) + bytes(length % 256)
    signature = key.sign(message)
    assert runner.ed25519_verify(public, message, signature)
    assert not runner.ed25519_verify(public, message + b"x", signature)
    assert not runner.ed25519_verify(public, message, signature[:-1] + bytes([signature[-1] ^ 1]))
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert not runner.ed25519_verify(other, message, signature)
    assert not runner.ed25519_verify(public[:31], message, signature)


def test_runner_imports_only_stdlib_numpy_and_onnxruntime() -> None:
    tree = ast.parse(Path(runner.__file__).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    third_party = roots - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"numpy", "onnxruntime"}


def test_signed_bundle_runs_and_reports_the_check(tmp_path: Path) -> None:
    private, public = write_keys(tmp_path)
    path = make_bundle(tmp_path / "b.tar.gz", private)
    opened = runner.open_bundle(path, public)
    assert opened.signature_checked and "signature verified" in runner.describe(opened)
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    out = runner.infer(opened, {"INPUT0": x})["OUTPUT0"]
    assert out.shape == (3, 10) and np.allclose(out.sum(axis=1), 1, atol=1e-5)


def test_a_changed_model_fails_its_checksum(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "b")
    data = bytearray((path / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(runner.BundleError, match=r"checksum mismatch for 'model.onnx'"):
        runner.open_bundle(path)


def test_a_consistent_rewrite_fails_the_signature(tmp_path: Path) -> None:
    """An attacker who also rewrites the checksums is caught by the signature, not the sums."""
    private, public = write_keys(tmp_path)
    path = make_bundle(tmp_path / "b", private)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["outputs"][0]["name"] = "EVIL"
    (path / "manifest.json").write_text(json.dumps(manifest))
    runner.open_bundle(path)  # checksums alone still pass: the model file is untouched
    with pytest.raises(runner.BundleError, match="signature does not match"):
        runner.open_bundle(path, public)
    (tmp_path / "other").mkdir()
    _, stranger = write_keys(tmp_path / "other")
    clean = make_bundle(tmp_path / "clean", private)
    with pytest.raises(runner.BundleError, match="signed by another key"):
        runner.open_bundle(clean, stranger)


def test_unsigned_bundle_with_a_key_is_refused(tmp_path: Path) -> None:
    _, public = write_keys(tmp_path)
    with pytest.raises(runner.BundleError, match="has no signature"):
        runner.open_bundle(make_bundle(tmp_path / "b"), public)


def test_public_key_must_be_ed25519_pem(tmp_path: Path) -> None:
    bad = tmp_path / "k.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(b"x" * 44).decode()
                   + "\n-----END PUBLIC KEY-----\n")
    with pytest.raises(runner.BundleError, match="expected an Ed25519 public key in PEM"):
        runner.read_public_key(bad)


def test_inputs_from_npy_json_and_oip(tmp_path: Path) -> None:
    row = np.arange(64, dtype=np.float64) / 64
    np.save(tmp_path / "one.npy", row)
    feeds = runner.load_inputs(tmp_path / "one.npy", SIGNATURE)
    assert feeds["INPUT0"].shape == (1, 64) and feeds["INPUT0"].dtype == np.float32
    (tmp_path / "a.json").write_text(json.dumps([row.tolist(), row.tolist()]))
    assert runner.load_inputs(tmp_path / "a.json", SIGNATURE)["INPUT0"].shape == (2, 64)
    oip = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32",
                       "data": row.tolist()}]}
    (tmp_path / "oip.json").write_text(json.dumps(oip))
    assert runner.load_inputs(tmp_path / "oip.json", SIGNATURE)["INPUT0"].shape == (1, 64)


def test_wrong_inputs_say_what_was_expected(tmp_path: Path) -> None:
    np.save(tmp_path / "short.npy", np.zeros((1, 63), np.float32))
    with pytest.raises(runner.BundleError, match=r"expected shape \[-1, 64\], got \[1, 63\]"):
        runner.load_inputs(tmp_path / "short.npy", SIGNATURE)
    (tmp_path / "named.json").write_text(json.dumps({"IMAGE": [0.0] * 64}))
    with pytest.raises(runner.BundleError, match=r"no input 'INPUT0'.*the file has \['IMAGE'\]"):
        runner.load_inputs(tmp_path / "named.json", SIGNATURE)
    with pytest.raises(runner.BundleError, match=r"expected a \.npy, \.npz or \.json"):
        runner.load_inputs(tmp_path / "x.csv", SIGNATURE)


def test_missing_bundle_is_named(tmp_path: Path) -> None:
    with pytest.raises(runner.BundleError, match="no such bundle"):
        runner.open_bundle(tmp_path / "absent.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(runner.BundleError, match=r"no manifest\.json"):
        runner.open_bundle(tmp_path / "empty")
