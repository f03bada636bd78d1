"""The kserve SDK's REST and gRPC clients, unchanged, against a live gateway: the same answers as
tritonclient's. The SDK runs in its own environment (`.venv-kserve`, see kserve_venv.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from tests.integration import kserve_venv
from tests.integration.conftest import Servers

CLIENT = Path(__file__).with_name("kserve_client.py")


@pytest.fixture(scope="module")
def kserve_python() -> Path:
    try:
        return kserve_venv.python()
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot build {kserve_venv.DEFAULT.name} with {kserve_venv.REQUIREMENT} "
                    f"(is the package registry reachable?): {exc}")


# NOTE: the ceiling covers the venv's one-time build (CI builds it fresh each run).
@pytest.mark.timeout(kserve_venv.INSTALL_TIMEOUT_S + 120)
def test_kserve_rest_and_grpc_clients_get_tritonclients_answers(
        servers: Servers, kserve_python: Path) -> None:
    rows = np.random.default_rng(7).random((3, 64), dtype=np.float32)
    run = subprocess.run([str(kserve_python), str(CLIENT), servers.gateway_http,
                          servers.gateway_grpc, "digits", "INPUT0", json.dumps(rows.tolist())],
                         capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(run.stdout)
    tensor = tgrpc.InferInput("INPUT0", [3, 64], "FP32")
    tensor.set_data_from_numpy(rows)
    expected = tgrpc.InferenceServerClient(servers.gateway_grpc).infer("digits", [tensor])
    for protocol in ("rest", "grpc"):
        answer = seen[protocol]
        assert (answer["live"], answer["ready"], answer["model_ready"]) == (True, True, True)
        assert answer["id"] == "kserve-sdk"
        assert set(answer["outputs"]) == {"OUTPUT0"}, answer["outputs"].keys()
        np.testing.assert_allclose(np.asarray(answer["outputs"]["OUTPUT0"], np.float32),
                                   expected.as_numpy("OUTPUT0"), rtol=1e-5, atol=1e-6)
    assert seen["rest"]["missing_ready"] is False
