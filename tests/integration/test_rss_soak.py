"""The RSS soak, short: `tensorgate serve` with the passthrough model answers a couple of
thousand 224x224 requests over gRPC and over HTTP without errors, the gateway's and the
runtime's memory is read at each sample, and a bound the run cannot meet fails it."""

from __future__ import annotations

import re

import pytest

from loadtest import rss_soak
from loadtest.tools import hint, missing

SHORT = ["--requests", "1500", "--warmup", "300", "--concurrency", "16", "--connections", "4",
         "--gateway-processes", "1", "--time-limit-s", "120"]


@pytest.fixture(autouse=True)
def _h2load() -> None:
    for tool in missing("h2load"):
        pytest.skip(hint(tool))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_short_soak_reports_both_roles_at_every_sample(protocol: str,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert rss_soak.main([*SHORT, "--protocol", protocol, "--max-growth-mib", "400"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (after warm-up|\d+) \| (\d+) \| ([\d-]+) \| ([\d.]+) \(([\d.]+)\) \| "
                      r"([\d.]+) \(([\d.]+)\) \|$", out, re.MULTILINE)
    assert [row[0] for row in rows] == ["after warm-up", "150", "750", "1500"]
    for _, _, _, gateway, gateway_shared, runtime, runtime_shared in rows:
        # Resident memory of real processes: a gateway and a runtime hold tens of MiB at least.
        assert float(gateway) > 20 and float(runtime) > 20
        assert float(gateway_shared) <= float(gateway) and float(runtime_shared) <= float(runtime)
    assert all(float(row[2]) > 0 for row in rows[1:])
    assert "gateway: " in out and "runtime: " in out and "within the bound of 400 MiB" in out


def test_growth_over_the_bound_fails_the_soak(capsys: pytest.CaptureFixture[str]) -> None:
    # A negative bound no run can meet: the verdict and exit status must say so.
    assert rss_soak.main([*SHORT, "--requests", "200", "--max-growth-mib", "-100000"]) == 1
    captured = capsys.readouterr()
    assert "over the bound" in captured.out and "FAILED: gateway RSS grew" in captured.err
