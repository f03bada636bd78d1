"""The Grafana dashboard and the alert rules query only metrics a live `tensorgate serve` exports,
and the statistics extension counts what /metrics counts."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from common.buckets import LATENCY_BUCKETS
from loadtest.locust.local import ROOT, Served, free_port, serve
from runtime.metrics import gpu_collector
from tests.unit.test_runtime_metrics import FakeNvml

DASHBOARD = ROOT / "deploy" / "grafana" / "tensorgate.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\btensorgate_[A-Za-z0-9_]+")
RECORD = re.compile(r"\btensorgate:[A-Za-z0-9_:]+")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, list]]:
    """Two gateway processes and a runtime worker after traffic through both protocols."""
    registry = tmp_path_factory.mktemp("dash") / "r.db"
    with serve(registry, "--threads", "1", "--gateway-processes", "2",
               metrics_port=free_port()) as served:
        send_traffic(served)
        text = urllib.request.urlopen(f"http://{served.metrics}/metrics", timeout=10).read()
        yield served, list(text_string_to_metric_families(text.decode()))


def send_traffic(served: Served) -> None:
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    http = thttp.InferenceServerClient(served.http)
    grpc = tgrpc.InferenceServerClient(served.grpc)
    for version, binary in (("1", True), ("2", False), ("", True)):
        tensor = thttp.InferInput("INPUT0", [3, 64], "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        assert http.infer("digits", [tensor], model_version=version).as_numpy("OUTPUT0") \
            is not None
    for version in ("1", "2", "2"):
        gtensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
        gtensor.set_data_from_numpy(x[:1])
        assert grpc.infer("digits", [gtensor], model_version=version).as_numpy("OUTPUT0") \
            is not None
    bad = tgrpc.InferInput("INPUT0", [1, 63], "FP32")
    bad.set_data_from_numpy(x[:1, :63])
    with pytest.raises(Exception, match="INPUT0"):
        grpc.infer("digits", [bad])


def dashboard_queries() -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return found


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def gpu_names() -> set[str]:
    """What the NVML collector exports, read from it with a fake NVML (no GPU here)."""
    collector = gpu_collector(FakeNvml(), env={})
    assert collector is not None
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    return {s.name for family in registry.collect() for s in family.samples}


def test_every_metric_the_dashboard_and_alerts_query_is_exported(live: tuple) -> None:
    _, families = live
    exported = {s.name for family in families for s in family.samples}
    queries = dashboard_queries() + [rule["expr"] for rule in alert_rules()]
    wanted = {name for query in queries for name in METRIC.findall(query)}
    # The extraction must see the metrics of every panel group, or this test proves nothing.
    assert {"tensorgate_requests_total", "tensorgate_runtime_queue_depth",
            "tensorgate_runtime_batch_size_bucket", "tensorgate_gpu_utilization_ratio"} <= wanted
    gpu = {name for name in wanted if name.startswith("tensorgate_gpu_")}
    assert gpu <= gpu_names(), "GPU metrics the NVML collector does not export"
    assert sorted(wanted - gpu - exported) == []


def test_runtime_and_gateway_metrics_carry_bounded_labels(live: tuple) -> None:
    _, families = live
    allowed = {"model", "version", "state", "protocol", "code", "endpoint", "le", "limit",
               "agree", "variant"}
    for family in families:
        if family.name.startswith("tensorgate_"):
            assert family.type != "summary", family.name
            for sample in family.samples:
                assert set(sample.labels) <= allowed, (sample.name, sample.labels)
    versions = {s.labels["version"] for f in families
                if f.name == "tensorgate_runtime_request_duration_seconds"
                for s in f.samples if s.labels.get("model") == "digits"}
    assert versions == {"1", "2"}


def test_statistics_extension_agrees_with_metrics(live: tuple) -> None:
    served, families = live
    counters = {(f.name, s.labels["version"]): s.value for f in families
                for s in f.samples if s.name.endswith("_total")
                and f.name in ("tensorgate_runtime_inferences", "tensorgate_runtime_executions")
                and s.labels.get("model") == "digits"}
    http = thttp.InferenceServerClient(served.http).get_inference_statistics("digits")
    grpc = tgrpc.InferenceServerClient(served.grpc).get_inference_statistics("digits",
                                                                             as_json=True)
    for stats in (http["model_stats"], grpc["model_stats"]):
        by_version = {s["version"]: s for s in stats}
        for version in ("1", "2"):
            # tritonclient's gRPC JSON writes 64-bit counts as strings
            assert int(by_version[version]["inference_count"]) == \
                counters["tensorgate_runtime_inferences", version]
            assert int(by_version[version]["execution_count"]) == \
                counters["tensorgate_runtime_executions", version]
    # version 1: 3 rows over HTTP + 1 over gRPC; version 2: 3 + 3 over HTTP, 2 over gRPC
    assert counters["tensorgate_runtime_inferences", "1"] == 4
    assert counters["tensorgate_runtime_inferences", "2"] == 8


def test_alerts_are_multiwindow_burn_rates_on_real_bucket_boundaries() -> None:
    rules = alert_rules()
    records = {rule["record"] for rule in rules if "record" in rule}
    alerts = [rule for rule in rules if "alert" in rule]
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert set(RECORD.findall(rule["expr"])) <= records, rule["alert"]
    burns = [rule for rule in alerts if "Budget" in rule["alert"]]
    assert {r["alert"] for r in burns} == {"TensorgateErrorBudgetBurn",
                                          "TensorgateLatencyBudgetBurn"}
    assert all(len(RECORD.findall(r["expr"])) == 2 for r in burns)  # a long and a short window
    every = "\n".join(rule["expr"] for rule in rules) + "\n".join(dashboard_queries())
    for bound in re.findall(r'le="([^"]+)"', every):
        assert float(bound) in LATENCY_BUCKETS, bound


def test_dashboard_panels_have_queries_on_the_chosen_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "model",
                                                                   "version"}
