"""Health, metadata, config, statistics and the repository index, over HTTP and gRPC."""

from __future__ import annotations

import json
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Servers


def clients(servers: Servers) -> list[tuple[str, object]]:
    return [("http", thttp.InferenceServerClient(servers.gateway_http)),
            ("grpc", tgrpc.InferenceServerClient(servers.gateway_grpc))]



def test_health(servers: Servers) -> None:
    for _, client in clients(servers):
        assert client.is_server_live()  # type: ignore[attr-defined]
        assert client.is_server_ready()  # type: ignore[attr-defined]
        assert client.is_model_ready("digits")  # type: ignore[attr-defined]
        assert client.is_model_ready("digits", "1")  # type: ignore[attr-defined]
        assert not client.is_model_ready("digits", "7")  # type: ignore[attr-defined]
        assert not client.is_model_ready("nope")  # type: ignore[attr-defined]


def test_server_metadata_lists_implemented_extensions(servers: Servers) -> None:
    http = thttp.InferenceServerClient(servers.gateway_http).get_server_metadata()
    grpc_ = tgrpc.InferenceServerClient(servers.gateway_grpc).get_server_metadata(as_json=True)
    assert http["name"] == grpc_["name"] == "tensorgate"
    assert "statistics" in http["extensions"] and "model_configuration" in grpc_["extensions"]


@pytest.mark.parametrize(("version", "platform"), [("1", "onnxruntime_onnx"),
                                                   ("2", "pytorch_libtorch")])
def test_model_metadata(servers: Servers, version: str, platform: str) -> None:
    http = thttp.InferenceServerClient(servers.gateway_http).get_model_metadata("digits", version)
    grpc_ = tgrpc.InferenceServerClient(servers.gateway_grpc).get_model_metadata(
        "digits", version, as_json=True)
    for meta in (http, grpc_):
        assert meta["name"] == "digits" and meta["platform"] == platform
        assert meta["versions"] == ["1", "2"]
        assert meta["inputs"][0]["name"] == "INPUT0"
        assert [int(d) for d in meta["inputs"][0]["shape"]] == [-1, 64]
        assert [int(d) for d in meta["outputs"][0]["shape"]] == [-1, 10]


def test_model_config(servers: Servers) -> None:
    http = thttp.InferenceServerClient(servers.gateway_http).get_model_config("digits", "1")
    grpc_ = tgrpc.InferenceServerClient(servers.gateway_grpc).get_model_config(
        "digits", "1", as_json=True)["config"]
    for config in (http, grpc_):
        assert config["name"] == "digits" and int(config["max_batch_size"]) == 64
        assert config["input"][0]["data_type"] == "TYPE_FP32"
        assert [int(d) for d in config["input"][0]["dims"]] == [64]
        assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 500
        assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_statistics_count_inferences_and_agree_between_protocols(servers: Servers) -> None:
    client = tgrpc.InferenceServerClient(servers.gateway_grpc)
    tensor = tgrpc.InferInput("INPUT0", [3, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((3, 64), np.float32))
    before = client.get_inference_statistics("digits", "1", as_json=True)["model_stats"][0]
    client.infer("digits", [tensor], model_version="1")
    grpc_stats = client.get_inference_statistics("digits", "1", as_json=True)["model_stats"][0]
    http_stats = thttp.InferenceServerClient(servers.gateway_http).get_inference_statistics(
        "digits", "1")["model_stats"][0]
    assert int(grpc_stats["inference_count"]) == int(before.get("inference_count", 0)) + 3
    assert int(http_stats["inference_count"]) == int(grpc_stats["inference_count"])
    assert http_stats["inference_stats"]["success"]["count"] >= 1
    assert http_stats["inference_stats"]["compute_infer"]["ns"] > 0
    assert any(b["batch_size"] == 3 for b in http_stats["batch_stats"])


def test_statistics_of_every_model(servers: Servers) -> None:
    with urllib.request.urlopen(f"http://{servers.gateway_http}/v2/models/stats") as answer:
        stats = json.loads(answer.read())
    assert {(s["name"], s["version"]) for s in stats["model_stats"]} == {("digits", "1"),
                                                                       ("digits", "2")}


def test_statistics_of_an_unknown_model_is_not_found(servers: Servers) -> None:
    with pytest.raises(InferenceServerException) as caught:
        thttp.InferenceServerClient(servers.gateway_http).get_inference_statistics("nope")
    assert caught.value.status() == "404"


def test_repository_index(servers: Servers) -> None:
    http = thttp.InferenceServerClient(servers.gateway_http).get_model_repository_index()
    grpc_ = tgrpc.InferenceServerClient(servers.gateway_grpc).get_model_repository_index(
        as_json=True)["models"]
    for index in (http, grpc_):
        assert sorted((m["name"], m["version"], m["state"]) for m in index) == [
            ("digits", "1", "READY"), ("digits", "2", "READY")]


def test_unimplemented_rpcs_say_so(servers: Servers) -> None:
    with grpc.insecure_channel(servers.gateway_grpc) as channel, \
            pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/inference.GRPCInferenceService/NoSuchRpc")(b"", timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_metrics_count_requests_by_model_protocol_and_code(servers: Servers) -> None:
    def count(protocol: str, code: str, model: str = "digits") -> float:
        value = servers.metrics.get_sample_value(
            "tensorgate_requests_total", {"model": model, "protocol": protocol, "code": code})
        return value or 0.0

    before_ok, before_bad = count("http", "OK"), count("http", "INVALID_ARGUMENT")
    client = thttp.InferenceServerClient(servers.gateway_http)
    good = thttp.InferInput("INPUT0", [1, 64], "FP32")
    good.set_data_from_numpy(np.zeros((1, 64), np.float32))
    client.infer("digits", [good])
    bad = thttp.InferInput("INPUT0", [1, 8], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 8), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("digits", [bad])
    assert count("http", "OK") == before_ok + 1
    assert count("http", "INVALID_ARGUMENT") == before_bad + 1
    latency = servers.metrics.get_sample_value(
        "tensorgate_request_duration_seconds_count", {"model": "digits", "protocol": "http"})
    assert latency is not None and latency >= 2
