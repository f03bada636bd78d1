"""`tensorgate models` as an ML engineer runs it: register, validate, promote, roll back."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from tests.integration.test_cli import READY, start, wait_for

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"


def tensorgate(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tensorgate", *args, "--model-repository",
                           str(repo), "--registry", str(repo.parent / "r.db")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(DIGITS, target / "digits")
    return target


def listing(repo: Path) -> list[list[str]]:
    out = tensorgate(repo, "models", "list").stdout.strip().splitlines()
    return [line.split() for line in out[1:]]


def test_register_validates_then_serves_and_lists_the_version(repo: Path) -> None:
    done = tensorgate(repo, "models", "register", "digits", "--file",
                      str(DIGITS / "1" / "model.onnx"), "--notes", "retrained")
    assert done.returncode == 0, done.stderr
    assert "registered digits:3" in done.stderr and "validated and ready" in done.stderr
    assert (repo / "digits" / "3" / "model.onnx").read_bytes() == (
        DIGITS / "1" / "model.onnx").read_bytes()
    assert [row[:3] for row in listing(repo)] == [["digits", v, "ready"] for v in "123"]
    described = json.loads(tensorgate(repo, "models", "describe", "digits:3").stdout)
    version = described["versions"][0]
    assert version["notes"] == "retrained" and version["state"] == "ready"
    assert version["signature"]["outputs"] == [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [10]}]
    assert [h["action"] for h in described["history"]][:2] == ["version.ready",
                                                              "version.register"]


def test_a_corrupt_artifact_fails_validation_and_serves_nothing(repo: Path) -> None:
    broken = repo.parent / "broken.onnx"
    broken.write_bytes(b"this is not an onnx model" * 100)
    done = tensorgate(repo, "models", "register", "digits", "--file", str(broken))
    assert done.returncode == 1
    assert "failed validation and serves nothing: the model does not load" in done.stderr
    assert not (repo / "digits" / "3").exists()
    assert not list((repo / "digits").glob(".staging*"))
    state = next(row for row in listing(repo) if row[1] == "3")
    assert state[2] == "failed"


def test_a_model_whose_outputs_do_not_match_its_config_is_refused(repo: Path) -> None:
    config = repo.parent / "config.yaml"
    config.write_text((DIGITS / "config.yaml").read_text().replace("shape: [10]",
                                                                    "shape: [7]"))
    done = tensorgate(repo, "models", "register", "wrong", "--file",
                      str(DIGITS / "1" / "model.onnx"), "--config", str(config))
    assert done.returncode == 1, done.stderr
    assert "OUTPUT0" in done.stderr and "7" in done.stderr
    assert not (repo / "wrong").exists() or not any((repo / "wrong").glob("[0-9]*"))
    assert not (repo / "wrong" / "config.yaml").exists()


def test_a_version_holding_traffic_is_not_unregistered_without_force(repo: Path) -> None:
    assert tensorgate(repo, "models", "register", "digits", "--file",
                      str(DIGITS / "1" / "model.onnx")).returncode == 0
    assert tensorgate(repo, "models", "promote", "digits:3").returncode == 0
    refused = tensorgate(repo, "models", "unregister", "digits:3")
    assert refused.returncode == 2 and "alias production" in refused.stderr
    assert tensorgate(repo, "models", "unregister", "digits:3", "--force").returncode == 0
    assert (repo / "digits" / ".retired" / "3" / "model.onnx").exists()
    assert not (repo / "digits" / "3").exists()


def test_a_changed_artifact_is_refused_at_start(repo: Path) -> None:
    process, lines = start("serve", "--model-repository", str(repo), "--registry",
                           str(repo.parent / "r.db"), "--http-port", "0", "--grpc-port", "0",
                           "--metrics-port", "-1", "--no-auth")
    seen: list[str] = []
    assert wait_for(lines, READY, seen), "".join(seen)
    process.terminate()
    process.wait(30)
    (repo / "digits" / "1" / "model.onnx").write_bytes(b"tampered")
    process, lines = start("serve", "--model-repository", str(repo), "--registry",
                           str(repo.parent / "r.db"), "--http-port", "0", "--grpc-port", "0",
                           "--metrics-port", "-1", "--no-auth")
    assert process.wait(60) == 2
    text = "".join(iter(lambda: lines.get(timeout=10) or "", ""))
    assert "does not match" in text and "digits:1" in text


@pytest.fixture
def served(repo: Path) -> Iterator[int]:
    process, lines = start("serve", "--model-repository", str(repo), "--registry",
                           str(repo.parent / "r.db"), "--http-port", "0", "--grpc-port", "0",
                           "--metrics-port", "-1", "--no-auth", "--threads", "1",
                           "--gateway-processes", "1")
    seen: list[str] = []
    try:
        ready = wait_for(lines, READY, seen)
        assert ready, "".join(seen)
        yield int(ready.group(2))
    finally:
        process.terminate()
        process.wait(30)


def served_version(port: int) -> str:
    tensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
    return str(client.infer("digits", [tensor]).get_response().model_version)


def eventually(port: int, version: str) -> None:
    deadline = time.monotonic() + 60  # a ceiling, not an expectation
    while served_version(port) != version:
        assert time.monotonic() < deadline, f"requests never reached version {version}"
        time.sleep(0.1)


def test_promote_and_rollback_move_a_running_servers_requests(repo: Path, served: int) -> None:
    assert served_version(served) == "2"  # no production alias: the latest version
    for version in ("1", "2"):
        done = tensorgate(repo, "models", "promote", f"digits:{version}")
        assert done.returncode == 0, done.stderr
        eventually(served, version)
    back = tensorgate(repo, "models", "rollback", "digits")
    assert re.search(r"production 2 -> 1", back.stderr), back.stderr
    eventually(served, "1")
    audit = tensorgate(repo, "audit", "--model", "digits").stdout
    assert "alias.rollback" in audit and "alias.set" in audit
