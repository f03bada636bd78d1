"""Request log lines: only when sampled or slow, as JSON; the JSON formatter merges them."""

from __future__ import annotations

import json
import logging
import random

import pytest

from common.logs import JsonFormatter
from gateway.request_log import RequestLog, request_log


def test_off_by_default() -> None:
    assert request_log(0.0, 0.0) is None


def test_a_slow_request_is_always_logged_a_fast_one_only_when_sampled(
        caplog: pytest.LogCaptureFixture) -> None:
    log = RequestLog(sample=0.0, slow_s=0.1, rng=random.Random(1))
    with caplog.at_level(logging.INFO, logger="tensorgate.requests"):
        assert log.observe("r1", "digits", "2", "grpc", "OK", 0.25)
        assert not log.observe("r2", "digits", "2", "grpc", "OK", 0.01)
    line = json.loads(caplog.records[-1].getMessage())
    assert line == {"event": "request", "request_id": "r1", "model": "digits", "version": "2",
                    "protocol": "grpc", "code": "OK", "latency_ms": 250.0, "slow": True}


def test_sampling_logs_about_its_share() -> None:
    log = RequestLog(sample=0.1, slow_s=0.0, rng=random.Random(7))
    logged = sum(log.observe(str(i), "m", "", "http", "OK", 0.001) for i in range(10_000))
    assert 800 < logged < 1200


def test_the_json_formatter_merges_a_json_message_and_quotes_a_plain_one() -> None:
    formatter = JsonFormatter()
    merged = json.loads(formatter.format(logging.LogRecord(
        "tensorgate.requests", logging.INFO, __file__, 1, '{"request_id": "r9"}', None, None)))
    assert merged["request_id"] == "r9" and merged["level"] == "INFO"
    plain = json.loads(formatter.format(logging.LogRecord(
        "tensorgate", logging.WARNING, __file__, 1, "worker %s died", ("runtime-0",), None)))
    assert plain["message"] == "worker runtime-0 died" and plain["logger"] == "tensorgate"
