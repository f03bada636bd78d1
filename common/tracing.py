"""OpenTelemetry tracing for both services: off unless an exporter is set; W3C trace context.

The gateway opens one span per request and hands its `traceparent` to the runtime inside the
request (a `parameters` entry), where queue and compute become child spans.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from common.model_config import ConfigError

log = logging.getLogger("tensorgate")
EXPORTERS = ("console", "otlp")
TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: Tracer | None = None
#: Whether to trace a request for this model (the trace settings); None: every request.
_sample: Callable[[str], bool] | None = None
_IDS = RandomIdGenerator()


def setup(exporter: str | SpanExporter | None, service: str) -> Tracer | None:
    """Turn tracing on for this process (`console`, `otlp`, or an exporter object for tests);
    None leaves it off. Returns the tracer, also kept for `tracer()`."""
    global _tracer
    if exporter is None:
        _tracer = None
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if isinstance(exporter, str):
        provider.add_span_processor(BatchSpanProcessor(_exporter(exporter)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _tracer = provider.get_tracer("tensorgate")
    return _tracer


def tracer() -> Tracer | None:
    """The tracer `setup` made, or None when tracing is off (the hot path checks only this)."""
    return _tracer


def set_sampling(sample: Callable[[str], bool] | None) -> None:
    """Decide per request, by its model, whether `start_request` records it (None: always)."""
    global _sample
    _sample = sample


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError("--trace-exporter otlp needs the OTLP exporter: pip install "
                              "'tensorgate[otlp]'") from None
        return OTLPSpanExporter()  # endpoint from OTEL_EXPORTER_OTLP_ENDPOINT, as usual
    raise ConfigError(f"--trace-exporter: expected one of {', '.join(EXPORTERS)}, got {name!r}")


def start_request(tracer_: Tracer, name: str, headers: Mapping[str, str],
                  attributes: Mapping[str, Any]) -> tuple[Span, str]:
    """A server span continuing the caller's `traceparent` (if any), and the `traceparent` that
    names this span for the next hop.

    A request the sampling rule (`set_sampling`, by the `model` attribute) leaves out gets a span
    that records nothing, and its `traceparent` says "not sampled", so the runtime records nothing
    either; the caller's trace id still travels on.
    """
    context = _PROPAGATOR.extract(carrier=headers)
    if _sample is not None and not _sample(str(attributes.get("model", ""))):
        span: Span = _unsampled(trace.get_current_span(context).get_span_context())
    else:
        span = tracer_.start_span(name, context=context, kind=SpanKind.SERVER,
                                  attributes=dict(attributes))
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return span, carrier.get(TRACEPARENT, "")


def _unsampled(parent: SpanContext) -> Span:
    trace_id = parent.trace_id if parent.is_valid else _IDS.generate_trace_id()
    return NonRecordingSpan(SpanContext(trace_id, _IDS.generate_span_id(), is_remote=False,
                                        trace_flags=TraceFlags(TraceFlags.DEFAULT)))


def end(span: Span, code: str) -> None:
    span.set_attribute("rpc.grpc.status_code", code)
    if code != "OK":
        span.set_status(Status(StatusCode.ERROR, code))
    span.end()


def record_runtime(tracer_: Tracer, traceparent: str, model: str, version: str,
                   marks: Sequence[float], batch: tuple[int, int, int] | None,
                   failed: bool) -> None:
    """The runtime's spans for one request, under the gateway's span named by `traceparent`:
    `runtime`, holding `queue` (waiting for a batch) and `batch` (the batch that ran it, with
    its row count), which holds `compute` (the model itself, without joining and splitting).

    `marks` are monotonic seconds: arrival, batch start, batch end (fewer when it never ran);
    `batch` is (rows, input_ns, infer_ns) of that batch.
    """
    context = _PROPAGATOR.extract(carrier={TRACEPARENT: traceparent})
    offset = time.time_ns() - time.monotonic_ns()
    stamps = [int(mark * 1e9) + offset for mark in marks]
    attributes = {"model": model, "model.version": version}
    root = tracer_.start_span("runtime", context=context, kind=SpanKind.SERVER,
                              attributes=attributes, start_time=stamps[0])
    inside = trace.set_span_in_context(root)
    if len(stamps) > 1:
        tracer_.start_span("queue", context=inside, start_time=stamps[0]).end(stamps[1])
    if len(stamps) > 2 and batch is not None:
        rows, input_ns, infer_ns = batch
        ran = tracer_.start_span("batch", context=inside, start_time=stamps[1],
                                 attributes={"batch.rows": rows})
        compute = stamps[1] + input_ns
        tracer_.start_span("compute", context=trace.set_span_in_context(ran),
                           start_time=compute).end(compute + infer_ns)
        ran.end(stamps[2])
    if failed:
        root.set_status(Status(StatusCode.ERROR))
    root.end(max(time.time_ns(), stamps[-1]))
