"""`tensorgate models` as an ML engineer runs it: register, validate, promote, roll back."""

from __future__ import annotations

import json
import os
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
from tests.waiting import until

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
    described = json.loads(tensorgate(repo, "models", "describe", "digits:3", "--json").stdout)
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
    until(lambda: served_version(port) == version, f"requests reaching version {version}",
          every_s=0.1)


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


def test_probe_13_a_config_of_any_name_is_placed_as_the_model_s_config(repo: Path) -> None:
    mine = repo.parent / "my-config.yaml"
    mine.write_text((DIGITS / "config.yaml").read_text().replace("max_batch_size: 64",
                                                                  "max_batch_size: 16"))
    done = tensorgate(repo, "models", "register", "mine", "--file",
                      str(DIGITS / "1" / "model.onnx"), "--config", str(mine))
    assert done.returncode == 0, done.stderr
    assert (repo / "mine" / "config.yaml").read_bytes() == mine.read_bytes()
    assert sorted(p.name for p in (repo / "mine" / "1").iterdir()) == ["model.onnx"]
    pbtxt = repo.parent / "triton-style.pbtxt"
    pbtxt.write_text('platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
                     'input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 64 ] } ]\n'
                     'output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 10 ] } ]\n')
    done = tensorgate(repo, "models", "register", "tri", "--file",
                      str(DIGITS / "1" / "model.onnx"), "--config", str(pbtxt))
    assert done.returncode == 0, done.stderr
    assert (repo / "tri" / "config.pbtxt").read_bytes() == pbtxt.read_bytes()
    odd = repo.parent / "config.txt"
    odd.write_text("max_batch_size: 8\n")
    refused = tensorgate(repo, "models", "register", "odd", "--file",
                         str(DIGITS / "1" / "model.onnx"), "--config", str(odd))
    assert refused.returncode == 2 and "expected a config in YAML" in refused.stderr
    assert not (repo / "odd").exists()


def test_probe_17_a_failed_registration_uses_no_number_and_leaves_no_folder(
        repo: Path) -> None:
    broken = repo.parent / "broken.onnx"
    broken.write_bytes(b"not a model")
    before = sorted(p.name for p in repo.iterdir())
    assert tensorgate(repo, "models", "register", "digits", "--file",
                      str(broken)).returncode == 1
    done = tensorgate(repo, "models", "register", "digits", "--file",
                      str(DIGITS / "1" / "model.onnx"))
    assert done.returncode == 0 and "registered digits:3" in done.stderr, done.stderr
    assert tensorgate(repo, "models", "register", "fresh", "--file", str(broken),
                      "--config", str(DIGITS / "config.yaml")).returncode == 1
    assert sorted(p.name for p in repo.iterdir()) == before


def test_probe_17_the_last_ready_version_is_not_unregistered_without_force(
        repo: Path) -> None:
    assert tensorgate(repo, "models", "register", "solo", "--file",
                      str(DIGITS / "1" / "model.onnx"), "--config",
                      str(DIGITS / "config.yaml")).returncode == 0
    refused = tensorgate(repo, "models", "unregister", "solo:1")
    assert refused.returncode == 2 and "last ready version" in refused.stderr
    assert (repo / "solo" / "1" / "model.onnx").exists()
    assert tensorgate(repo, "models", "unregister", "solo:1", "--force").returncode == 0


def test_probe_17_the_readme_walkthrough_retires_only_the_version_it_registered() -> None:
    readme = (ROOT / "README.md").read_text()
    walkthrough = readme[readme.index("## Roll out a new model version"):]
    walkthrough = walkthrough[:walkthrough.index("\n## ", 1)]
    registered = set(re.findall(r"registered (\w+:\d+)", walkthrough))
    retired = re.findall(r"tensorgate models unregister (\S+)", walkthrough)
    shipped = {f"digits:{p.name}" for p in DIGITS.iterdir() if p.name.isdigit()}
    assert retired and registered
    assert all(target in registered and target not in shipped for target in retired)


def _failed_version(repo: Path, reason: str) -> None:
    from common.registry import Registry
    from common.registry.versions import Lifecycle, VersionRecord

    with Registry(repo.parent / "r.db") as registry:
        lifecycle = Lifecycle(registry)
        lifecycle.add(VersionRecord("digits", "7", "0" * 64, 1, "onnx", {}, "test",
                                    time.time(), "", "validating"), "test")
        lifecycle.set_state("digits", "7", "failed", "test", reason)
        for share in range(1, 16):
            registry.set_traffic("digits", {"1": share, "2": 100 - share}, actor="test")


def test_probe_18_list_stays_a_table_and_describe_is_a_summary(repo: Path) -> None:
    assert tensorgate(repo, "models", "list").returncode == 0  # registers the shipped versions
    reason = "the model does not load:\n" + "\n".join(f"line {i} " + "x" * 60 for i in range(9))
    _failed_version(repo, reason)
    env_run = subprocess.run([sys.executable, "-m", "tensorgate", "models", "list",
                              "--model-repository", str(repo), "--registry",
                              str(repo.parent / "r.db")], capture_output=True, text=True,
                             timeout=120, cwd=ROOT, env={**os.environ, "COLUMNS": "120"})
    lines = env_run.stdout.strip().splitlines()
    assert len(lines) == 4, env_run.stdout  # the head and one line per version
    assert all(len(line) <= 120 for line in lines), env_run.stdout
    assert "failed (the model does not load: line 0" in lines[3] and "x…" in lines[3]
    summary = tensorgate(repo, "models", "describe", "digits").stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(summary)
    assert " ".join(reason.split()) in summary  # the reason the table cut, in full
    assert sum("traffic.set" in line for line in summary.splitlines()) == 10
    full = json.loads(tensorgate(repo, "models", "describe", "digits", "--json").stdout)
    assert sum(h["action"] == "traffic.set" for h in full["history"]) == 15
