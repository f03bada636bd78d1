"""The span tree of one request: the caller's trace → gateway → runtime → queue, batch → compute."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common import tracing
from tests.integration.conftest import Servers

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup(exporter, "test")
    try:
        yield exporter
    finally:
        tracing.setup(None, "test")


def tree(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    by_name = {span.name: span for span in finished}
    assert set(by_name) >= {"infer digits", "runtime", "queue", "batch", "compute"}, by_name
    return by_name


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, span.name
    return span.parent.span_id


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_one_request_makes_one_tree_under_the_callers_trace(
        servers: Servers, spans: InMemorySpanExporter, protocol: str) -> None:
    rows = np.full((1, 64), 0.5, np.float32)
    if protocol == "http":
        tensor = thttp.InferInput("INPUT0", [1, 64], "FP32")
        tensor.set_data_from_numpy(rows)
        thttp.InferenceServerClient(servers.gateway_http).infer(
            "digits", [tensor], model_version="1", headers={"traceparent": TRACEPARENT})
    else:
        tensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
        tensor.set_data_from_numpy(rows)
        tgrpc.InferenceServerClient(servers.gateway_grpc).infer(
            "digits", [tensor], model_version="1", headers={"traceparent": TRACEPARENT})
    named = tree(spans.get_finished_spans())
    gateway, runtime = named["infer digits"], named["runtime"]
    assert {format(s.context.trace_id, "032x") for s in named.values()} == {TRACE_ID}
    assert parent_of(gateway) == int(PARENT, 16)
    assert parent_of(runtime) == gateway.context.span_id
    assert parent_of(named["queue"]) == parent_of(named["batch"]) == runtime.context.span_id
    assert parent_of(named["compute"]) == named["batch"].context.span_id
    assert named["batch"].attributes["batch.rows"] >= 1
    assert gateway.attributes["protocol"] == protocol
    assert gateway.attributes["rpc.grpc.status_code"] == "OK"
    assert str(gateway.attributes["upstream.address"]).startswith("127.0.0.1:")  # the lane
    for span in named.values():
        assert span.start_time <= span.end_time


def test_tracing_off_records_nothing(servers: Servers) -> None:
    exporter = InMemorySpanExporter()
    tracing.setup(exporter, "test")
    tracing.setup(None, "test")
    tensor = tgrpc.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    tgrpc.InferenceServerClient(servers.gateway_grpc).infer("digits", [tensor])
    assert exporter.get_finished_spans() == ()
