"""KServe v1 / TF Serving REST through a real gateway, with plain `requests`.

The bodies follow TF Serving's "RESTful API" documentation, adapted to digits (64 floats in).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from sklearn.datasets import load_digits

from common.registry import Registry
from common.settings import AuthSettings
from tests.integration.conftest import ROOT, Background, Servers

LIMIT = 1 << 16  # the gateway's body limit in the auth-on module
PIXELS = (load_digits().data[:3] / 16).round(4).tolist()  # three 8x8 digits, 64 floats each


def v1(servers: Servers, path: str) -> str:
    return f"http://{servers.gateway_http}/v1/models/{path}"


def v2_probabilities(servers: Servers, rows: list[list[float]]) -> np.ndarray:
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [len(rows), 64],
                        "data": rows}]}
    answer = requests.post(f"http://{servers.gateway_http}/v2/models/digits/versions/1/infer",
                           json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return np.asarray(answer.json()["outputs"][0]["data"]).reshape(len(rows), 10)


def test_row_format_predictions_match_v2_infer(servers: Servers) -> None:
    # TF Serving: {"signature_name": "<string>", "instances": <(nested)list>}
    body = {"signature_name": "serving_default", "instances": PIXELS}
    answer = requests.post(v1(servers, "digits/versions/1:predict"), json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert list(answer.json()) == ["predictions"]
    predictions = np.asarray(answer.json()["predictions"])
    assert predictions.shape == (3, 10)
    np.testing.assert_allclose(predictions, v2_probabilities(servers, PIXELS), rtol=1e-5)
    assert answer.headers["x-tensorgate-model-version"] == "1"
    assert answer.headers["x-request-id"]


def test_named_instances_and_the_columnar_format_agree(servers: Servers) -> None:
    expected = v2_probabilities(servers, PIXELS[:2])
    # TF Serving: "instances": [{"tag": ..., "signal": ...}, ...] — one object per instance.
    named = {"instances": [{"INPUT0": row} for row in PIXELS[:2]]}
    # TF Serving: {"inputs": {"tag": [...], "signal": [[...], [...]]}} — one batch per input.
    columnar = {"inputs": {"INPUT0": PIXELS[:2]}}
    bare = {"inputs": PIXELS[:2]}  # one input: the value itself
    answers = [requests.post(v1(servers, "digits/versions/1:predict"), json=b, timeout=30)
               for b in (named, columnar, bare)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    np.testing.assert_allclose(answers[0].json()["predictions"], expected, rtol=1e-5)
    for answer in answers[1:]:
        assert list(answer.json()) == ["outputs"]
        np.testing.assert_allclose(answer.json()["outputs"], expected, rtol=1e-5)


def test_status_and_metadata_have_tf_servings_shapes(servers: Servers) -> None:
    status = requests.get(v1(servers, "digits"), timeout=30)
    assert status.status_code == 200, status.text
    versions = status.json()["model_version_status"]
    assert [v["version"] for v in versions] == ["1", "2"]
    assert versions[0] == {"version": "1", "state": "AVAILABLE",
                           "status": {"error_code": "OK", "error_message": ""}}
    one = requests.get(v1(servers, "digits/versions/2"), timeout=30).json()
    assert [v["version"] for v in one["model_version_status"]] == ["2"]
    meta = requests.get(v1(servers, "digits/versions/1/metadata"), timeout=30)
    assert meta.status_code == 200, meta.text
    assert meta.json()["model_spec"] == {"name": "digits", "signature_name": "",
                                         "version": "1"}
    signature = meta.json()["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["INPUT0"] == {
        "dtype": "DT_FLOAT", "name": "INPUT0",
        "tensor_shape": {"dim": [{"size": "-1"}, {"size": "64"}]}}
    assert signature["outputs"]["OUTPUT0"]["tensor_shape"]["dim"][1] == {"size": "10"}
    latest = requests.get(v1(servers, "digits/metadata"), timeout=30).json()
    assert latest["model_spec"]["version"] == "2"  # TF Serving's "latest": the newest version


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("digits:predict", b"{not json", 400, "invalid predict body"),
    ("digits:predict", {"instances": [[0.5] * 63]}, 400, "shape [64], got [63]"),
    ("digits:predict", {"instances": [[0.5] * 64, [0.5] * 63]}, 400, "ragged"),
    ("digits:predict", {"instances": [["x"] * 64]}, 400, "FP32 data must be numbers"),
    ("digits:predict", {"instances": [{"PIXELS": [0.5] * 64}]}, 400, "no input named 'PIXELS'"),
    ("digits:predict", {"instances": [], }, 400, "empty"),
    ("digits:predict", {"instances": [[0.5] * 64], "inputs": [[0.5] * 64]}, 400, "exactly one"),
    ("digits:predict", {"instances": [[0.5] * 64], "extra": 1}, 400, "extra"),
    ("digits/versions/7:predict", {"instances": [[0.5] * 64]}, 404, "7"),
    ("nosuch:predict", {"instances": [[0.5] * 64]}, 404, "nosuch"),
    ("digits:classify", {"examples": []}, 501, "Classify"),
    ("digits/labels/stable:predict", {"instances": [[0.5] * 64]}, 501, "labels"),
    ("digits:explain", {"instances": [[0.5] * 64]}, 404, "explain"),
    ("-bad:predict", {"instances": [[0.5] * 64]}, 400, "model name"),
])
def test_bad_requests_are_refused_with_an_error_body(servers: Servers, path: str, body: Any,
                                                     status: int, words: str) -> None:
    data = body if isinstance(body, bytes) else None
    answer = requests.post(v1(servers, path), data=data,
                           json=None if data is not None else body, timeout=30)
    assert answer.status_code == status, answer.text
    assert list(answer.json()) == ["error"] and words in answer.json()["error"]


def test_wrong_method_and_unknown_version_status(servers: Servers) -> None:
    answer = requests.get(v1(servers, "digits:predict"), timeout=30)
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    answer = requests.get(v1(servers, "digits/versions/9"), timeout=30)
    assert answer.status_code == 404 and "no version 9" in answer.json()["error"]


def test_v1_predicts_are_counted_under_their_own_protocol(servers: Servers) -> None:
    labels = {"model": "digits", "protocol": "http_v1", "code": "OK"}
    before = servers.metrics.get_sample_value("tensorgate_requests_total", labels) or 0
    answer = requests.post(v1(servers, "digits:predict"), json={"instances": PIXELS[:1]},
                           timeout=30)
    assert answer.status_code == 200, answer.text
    assert servers.metrics.get_sample_value("tensorgate_requests_total", labels) == before + 1


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Servers, Registry,
                                                                        str]]:
    tmp: Path = tmp_path_factory.mktemp("tfserving")
    registry = Registry(tmp / "registry.db")
    key = registry.create_key("v1-user", "infer", ["digits"])[1]
    with Background(ROOT / "models", auth=AuthSettings(), registry_path=tmp / "registry.db",
                    registry_refresh_s=0.05, max_message_bytes=LIMIT) as servers:
        yield servers, registry, key
    registry.close()


def test_auth_applies_before_the_body_is_read(guarded: tuple[Servers, Registry, str]) -> None:
    servers, _, key = guarded
    body = {"instances": PIXELS[:1]}
    refused = requests.post(v1(servers, "digits:predict"), json=body, timeout=30)
    assert refused.status_code == 401 and "error" in refused.json()
    assert requests.get(v1(servers, "digits/metadata"), timeout=30).status_code == 401
    headers = {"authorization": f"Bearer {key}"}
    answer = requests.post(v1(servers, "digits:predict"), json=body, headers=headers,
                           timeout=30)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 1
    # NOTE: a body over the limit: refused for its missing key (401) before it is read (400).
    huge = b'{"instances": [' + b"0.5," * LIMIT + b"0.5]}"
    refused = requests.post(v1(servers, "digits:predict"), data=huge, timeout=60)
    assert refused.status_code == 401, refused.text
    too_big = requests.post(v1(servers, "digits:predict"), data=huge, headers=headers, timeout=60)
    assert too_big.status_code == 400 and "exceeds the limit" in too_big.json()["error"]


def test_a_split_chooses_the_version_and_the_header_names_it(
        guarded: tuple[Servers, Registry, str]) -> None:
    servers, registry, key = guarded
    registry.set_traffic("digits", {"1": 90, "2": 10}, sticky="header:x-user")
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + 60  # a ceiling, not an expectation
        for i in range(5000):
            if seen == {"1", "2"}:
                break
            assert time.monotonic() < deadline, f"only versions {seen} served under 90/10"
            headers = {"authorization": f"Bearer {key}", "x-user": f"user-{i}"}
            answer = requests.post(v1(servers, "digits:predict"), headers=headers,
                                   json={"instances": PIXELS[:1]}, timeout=30)
            assert answer.status_code == 200, answer.text
            seen.add(answer.headers["x-tensorgate-model-version"])
        assert seen == {"1", "2"}
    finally:
        registry.clear_traffic("digits")
