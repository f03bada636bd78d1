"""Scratch: the wiring end to end: infer with ids, feedback over HTTP and gRPC, then the report."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from sklearn.datasets import load_digits

from gateway.answer_store import AnswerStore, answers_path
from tensorgate import ab
from tests.integration.conftest import ROOT, Background


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_answers_feedback_and_the_report_join_up(tmp_path: Path) -> None:
    registry = tmp_path / "tensorgate.db"
    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    with Background(ROOT / "models", registry_path=registry, record_answers="all") as s:
        base = f"http://{s.gateway_http}/v2/models/digits"
        ids = {}
        for i in range(200):
            body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64],
                                "data": x[i].tolist()}]}
            if i % 2:
                body["id"] = f"mine-{i}"
            status, answer = post(f"{base}/versions/{1 + i % 2}/infer", body)
            assert status == 200, answer
            ids[answer["id"]] = int(digits.target[i])
        status, result = post(f"{base}/feedback", {"feedback": [
            {"id": k, "truth": v} for k, v in list(ids.items())[:150]]})
        assert status == 200, result
        assert result["recorded"] == 150
        status, result = post(f"{base}/feedback", {"id": "x"})
        assert status == 400, result
        channel = grpc.insecure_channel(s.gateway_grpc)
        call = channel.unary_unary("/tensorgate.Feedback/Post")
        rest = [{"id": k, "truth": v} for k, v in list(ids.items())[150:]]
        reply = json.loads(call(json.dumps({"model": "digits", "feedback": rest}).encode(),
                                timeout=10))
        assert reply["recorded"] == 50
        status, _ = post(f"http://{s.gateway_http}/v2/models/nosuch/infer", {"inputs": []})
    with AnswerStore(answers_path(registry), create=False) as store:
        report = ab.build_report("digits", store.outcomes("digits", 0),
                                 store.labelled("digits", 0), baseline="1")
    assert "digits" in ab.render(report, None, 0)
    versions = {v["version"]: v for v in report.summary["versions"]}
    assert versions["1"]["labelled"] == versions["2"]["labelled"] == 100
    assert versions["1"]["accuracy"] > 0.8


def test_by_default_only_models_under_a_traffic_policy_are_recorded(tmp_path: Path) -> None:
    registry = tmp_path / "tensorgate.db"
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64],
                        "data": [0.5] * 64}]}
    with Background(ROOT / "models", registry_path=registry) as s:
        for _ in range(5):
            assert post(f"http://{s.gateway_http}/v2/models/digits/infer", body)[0] == 200
    if answers_path(registry).exists():  # the store is made on the first answer to keep
        with AnswerStore(answers_path(registry), create=False) as store:
            assert store.outcomes("digits", 0) == []
