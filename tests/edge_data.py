"""Data for the edge export tests: the digits held-out split as .npz files, keys, a broken model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
#: Held-out accuracy of the served versions, from models/digits/ACCURACY.md.
SERVED_ACCURACY = {1: 0.98, 2: 442 / 450}


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test) exactly as models/train_digits.py splits them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y)
    return x_train, x_test, y_train, y_test


def write_digits_files(folder: Path, calibration_samples: int = 128) -> tuple[Path, Path]:
    """calibration.npz (training rows, no labels) and heldout.npz (all 450 rows with labels)."""
    x_train, x_test, _, y_test = digits_split()
    calibration, heldout = folder / "calibration.npz", folder / "heldout.npz"
    np.savez(calibration, INPUT0=x_train[:calibration_samples])
    np.savez(heldout, INPUT0=x_test, labels=y_test)
    return calibration, heldout


def write_keys(folder: Path) -> tuple[Path, Path]:
    """An Ed25519 key pair in PEM: (private, public)."""
    key = Ed25519PrivateKey.generate()
    private, public = folder / "signing.pem", folder / "signing.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def outlier_repository(folder: Path) -> Path:
    """A repository with `outlier`, broken for int8 on purpose: one weight of 1e4 on an input that
    is always masked to zero is harmless in float32, but the int8 scale it sets zeroes the rest."""
    repo = folder / "repo"
    (repo / "outlier" / "1").mkdir(parents=True)
    shutil.copyfile(MODELS / "digits" / "config.yaml", repo / "outlier" / "config.yaml")
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 1, (64, 10)).astype(np.float32)
    weights[0, :] = 1e4
    mask = np.ones(64, np.float32)
    mask[0] = 0
    nodes = [helper.make_node("Mul", ["INPUT0", "mask"], ["masked"]),
             helper.make_node("MatMul", ["masked", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["OUTPUT0"], axis=1)]
    graph = helper.make_graph(
        nodes, "outlier", [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(mask, "mask"), numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(repo / "outlier" / "1" / "model.onnx"))
    return repo
