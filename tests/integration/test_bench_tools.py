"""The load generators measure what a server did: against `sleepy` (two instances, 20 ms a call,
so at most 100 answers/s by construction) behind a real gateway, each tool's rate, count and
errors agree with the gateway's own counters and that bound, and the reports show the numbers
the tools returned. Then the benchmarks run end to end with tiny settings."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.proto import grpc_service_pb2 as pb
from loadtest import bench, faults, gpu_bench, pathcost, scaling, triton_perf
from loadtest.cases import BatchPoint
from loadtest.loadgen import Load, Outcome, Target, closed_loop, open_loop
from loadtest.report import (
    FLOOR_GRPC,
    FLOOR_HTTP,
    GW_BINARY,
    GW_GRPC,
    RUNTIME,
    OpenRow,
    Results,
    Row,
    render,
)
from loadtest.servers import Children, any_of, free_port, start_floor, start_gateway
from loadtest.tools import hint, missing

DELAY_S, INSTANCES = 0.02, 2
#: The most answers per second two sleepy instances can give: a generator reporting more is
#: wrong whatever the machine's load.
BOUND = INSTANCES / DELAY_S
METHOD = "/inference.GRPCInferenceService/ModelInfer"
HTTP_BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32",
                                    "data": [0, 1, 2, 3]}]}).encode()
JSON = (("Content-Type", "application/json"),)
#: Calls a closed loop sends but does not count, at most, per caller: the one in flight when its
#: time is up (measured here: exactly one per caller against sleepy), with room for a caller
#: that h2load restarts as it stops, on a busy machine.
UNCOUNTED = 3


def needs(*tools: str) -> None:
    for tool in missing(*tools):
        pytest.skip(hint(tool))


@dataclass
class Sleepy:
    children: Children
    grpc: str
    http: str
    metrics_port: int

    def served(self) -> int:
        """Inference requests the gateway has answered, whatever their status (its /metrics)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("tensorgate_requests_total{"))

    def counted(self, run: Callable[[], Outcome]) -> tuple[Outcome, int]:
        """What ``run`` returned, and how many requests the gateway answered meanwhile."""
        before = self.served()
        outcome = run()
        return outcome, self.served() - before

    def grpc_target(self, model: str = "sleepy") -> Target:
        request = faults.sleepy_request()
        with grpc.insecure_channel(self.grpc) as channel:
            answer = channel.unary_unary(METHOD)(request, timeout=30)
        if model != "sleepy":
            renamed = pb.ModelInferRequest.FromString(request)
            renamed.model_name = model
            request = renamed.SerializeToString()
        return Target("grpc", self.grpc, METHOD, request, answer_size=len(answer) + 5)


@pytest.fixture(scope="module")
def sleepy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sleepy]:
    tmp = tmp_path_factory.mktemp("bench-tools")
    lane = f"unix:{tmp}/lane.sock"
    children = Children(tmp)
    try:
        children.start("runtime", [sys.executable, "-m", "loadtest.sleepy", "--lane", lane,
                                   "--listen", f"unix:{tmp}/grpc.sock", "--delay", str(DELAY_S),
                                   "--instances", str(INSTANCES)],
                       any_of("tensorgate-runtime ready"))
        metrics = free_port()
        grpc_address, http_address = start_gateway(
            children, [lane], ("--no-auth", "--registry", str(tmp / "registry.db"),
                               "--metrics-port", str(metrics)))
        yield Sleepy(children, grpc_address, http_address, metrics)
    finally:
        children.close()


def assert_bounded(outcome: Outcome, served: int, callers: int) -> None:
    """A closed loop against sleepy: no errors, at most BOUND/s and not far below it, latency
    no less than one call's sleep, and every answer counted was one the gateway gave."""
    assert outcome.errors == 0, outcome.first_error
    assert 0.3 * BOUND <= outcome.rate <= 1.1 * BOUND, outcome
    assert outcome.p("50") >= 1000 * DELAY_S, outcome.percentiles_ms
    assert outcome.answered <= served <= outcome.answered + UNCOUNTED * callers, (
        outcome, served)
    assert outcome.server_cpu_s.get("gateway", 0) > 0, outcome.server_cpu_s


def test_h2load_closed_loop_agrees_with_the_gateway_and_the_service_time(sleepy: Sleepy) -> None:
    needs("h2load")
    target = sleepy.grpc_target()
    load = Load(8, 2, 0.0, 2.0)
    outcome, served = sleepy.counted(lambda: closed_loop(target, load,
                                                         sleepy.children.cpu_seconds))
    assert outcome.generator == "h2load -c 2 -m 4"
    assert_bounded(outcome, served, load.concurrency)


def test_wrk_closed_loop_agrees_with_the_gateway_and_the_service_time(sleepy: Sleepy) -> None:
    needs("wrk")
    target = Target("http", sleepy.http, "/v2/models/sleepy/infer", HTTP_BODY, JSON)
    load = Load(8, 8, 0.0, 2.0)
    outcome, served = sleepy.counted(lambda: closed_loop(target, load,
                                                         sleepy.children.cpu_seconds))
    assert outcome.generator == "wrk -t 1 -c 8"
    assert_bounded(outcome, served, load.concurrency)


def test_refused_requests_are_counted_as_errors_by_both_tools(sleepy: Sleepy) -> None:
    needs("h2load", "wrk")
    load = Load(4, 2, 0.0, 1.0)
    absent = sleepy.grpc_target("absent")
    grpc_run, grpc_served = sleepy.counted(lambda: closed_loop(absent, load, dict))
    http = Target("http", sleepy.http, "/v2/models/absent/infer", HTTP_BODY, JSON)
    http_run, http_served = sleepy.counted(lambda: closed_loop(http, load, dict))
    for outcome, served in ((grpc_run, grpc_served), (http_run, http_served)):
        assert outcome.answered == 0 and outcome.errors > 0, outcome
        assert outcome.errors <= served <= outcome.errors + UNCOUNTED * load.concurrency, (
            outcome, served)
    assert "grpc-status" in grpc_run.first_error and "non-2xx" in http_run.first_error


def test_the_open_loop_keeps_its_rate_and_every_request_is_answered(sleepy: Sleepy) -> None:
    needs("h2load")
    target = sleepy.grpc_target()
    rate, seconds = 0.6 * BOUND, 2.0
    outcome, served = sleepy.counted(lambda: open_loop(target, rate, 0.0, seconds,
                                                       sleepy.children.cpu_seconds))
    assert outcome.errors == 0, outcome.first_error
    assert outcome.answered == served == round(rate * seconds)
    assert 0.9 * rate <= outcome.sent_per_s <= 1.1 * rate, outcome
    assert outcome.p("50") >= 1000 * DELAY_S


def test_the_open_loop_sends_on_when_the_server_falls_behind(sleepy: Sleepy) -> None:
    """Twice what the server can answer: the sends keep to the schedule (no coordinated
    omission), the answers come at the server's rate, and the wait shows in the latency."""
    needs("h2load")
    target = sleepy.grpc_target()
    rate, seconds = 2 * BOUND, 1.5
    outcome, served = sleepy.counted(lambda: open_loop(target, rate, 0.0, seconds, dict))
    assert outcome.errors == 0 and outcome.answered == served == round(rate * seconds)
    assert outcome.sent_per_s >= 0.9 * rate, outcome
    assert outcome.rate <= 1.1 * BOUND, outcome
    # Half the requests cannot have been answered before the schedule ended.
    assert outcome.p("99") >= 1000 * seconds / 3, outcome.percentiles_ms


def perf_analyzer() -> str:
    found = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")
    if not found:
        pytest.skip("needs perf_analyzer: put it on PATH or name it in PERF_ANALYZER")
    return found


def test_perf_analyzer_rate_is_bounded_by_the_service_time(sleepy: Sleepy) -> None:
    opts = argparse.Namespace(perf_analyzer=perf_analyzer(), model="sleepy", concurrency=[4],
                              interval_ms=1000)
    port = int(sleepy.grpc.rpartition(":")[2])
    before = sleepy.served()
    rows = triton_perf.measure(opts, {"grpc": port}, triton_perf.MODES["gRPC"])
    served = sleepy.served() - before
    assert [c for c, _, _ in rows] == [4]
    _, rate, latency_us = rows[0]
    assert 0.3 * BOUND <= rate <= 1.1 * BOUND and latency_us >= 1e6 * DELAY_S, rows
    assert served >= rate * opts.interval_ms / 1000, (served, rows)


def table(text: str, heading: str) -> list[dict[str, str]]:
    """The first Markdown table after ``heading``, as one dict per row."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return [dict(zip(rows[0], cells)) for cells in rows[2:]]


def test_the_report_shows_the_numbers_the_generators_returned(sleepy: Sleepy) -> None:
    needs("h2load", "wrk")
    grpc_target = sleepy.grpc_target()
    http = Target("http", sleepy.http, "/v2/models/sleepy/infer", HTTP_BODY, JSON)
    meter = sleepy.children.cpu_seconds
    results = Results({}, "test", 1)
    # sleepy's ceiling is known without measuring it: two instances of 20 ms a call.
    results.sweeps["sleepy"] = [BatchPoint(1, BOUND, 1000 * DELAY_S, 1000 * DELAY_S,
                                           INSTANCES)]
    results.rows = [Row("sleepy", GW_GRPC, "grpc", 4, closed_loop(grpc_target,
                                                                 Load(4, 1, 0, 1), meter)),
                    Row("sleepy", GW_BINARY, "http", 4, closed_loop(http, Load(4, 4, 0, 1),
                                                                   meter))]
    results.open_rows = [OpenRow("sleepy", GW_GRPC, 0.5, BOUND,
                                 open_loop(grpc_target, 0.5 * BOUND, 0, 1, meter))]
    text = render(results)
    # The report prints 3 decimals for ms and CPU and none for rates: equal to that precision.
    shown = [c for c in table(text, "## Throughput") if c["path"] in (GW_GRPC, GW_BINARY)]
    for row, cells in zip(results.rows, shown, strict=True):
        out = row.outcome
        assert cells["generator"] == out.generator and cells["errors"] == str(out.errors)
        assert float(cells["requests/s"]) == pytest.approx(out.rate, abs=1)
        assert float(cells["p50 ms"]) == pytest.approx(out.p("50"), abs=1e-3)
        assert float(cells["÷ ceiling"]) == pytest.approx(out.rate / BOUND, rel=1e-2)
        assert float(cells["gateway CPU s/1k"]) == pytest.approx(row.cpu_per_1k("gateway"),
                                                                 abs=1e-3)
    (cells,) = table(text, "## Open loop")
    out = results.open_rows[0].outcome
    assert float(cells["sent/s"]) == pytest.approx(out.sent_per_s, abs=1)
    assert float(cells["answered/s"]) == pytest.approx(out.rate, abs=1)
    assert float(cells["p99 ms"]) == pytest.approx(out.p("99"), abs=1e-3)


def test_the_bench_measures_floors_and_paths_and_holds_each_path_against_its_floor() -> None:
    needs("h2load", "wrk")
    opts = bench.parse_args(["--quick", "--models", "digits", "--duration", "0.5",
                             "--warmup", "0.2"])
    results = bench.run(opts)
    assert not results.problems
    assert all(r.outcome.errors == 0 and r.outcome.rate > 0 for r in results.rows)
    paths = {(r.path, r.concurrency) for r in results.rows if r.model in ("-", "digits")}
    for path in (FLOOR_GRPC, FLOOR_HTTP, RUNTIME, GW_GRPC, GW_BINARY):
        assert {(path, 64), (path, 1)} <= paths
    assert list(results.alternating) == [FLOOR_GRPC, GW_GRPC, FLOOR_HTTP, GW_BINARY]
    assert all(len(rates) == 1 and rates[0] > 0 for rates in results.alternating.values())
    assert results.latency_turns is not None
    assert list(results.latency_turns.p50_ms) == [RUNTIME, GW_GRPC]
    assert all(len(p50) == 1 and p50[0] > 0 for p50 in results.latency_turns.p50_ms.values())
    top = results.find("digits", GW_GRPC, 64)
    assert top is not None
    assert [r.fraction for r in results.open_rows] == list(bench.OPEN_LOOP_FRACTIONS)
    for r in results.open_rows:
        # A quick run's maximum comes from one short burst, so the gateway may shed here on a
        # busy machine; the schedule is kept and every request is accounted for all the same.
        asked = r.fraction * r.max_rate
        assert r.max_rate == top.outcome.rate
        assert r.outcome.sent_per_s == pytest.approx(asked, rel=0.1)
        assert r.outcome.answered + r.outcome.errors == round(asked * opts.duration)
    shown = table(render(results), "## Throughput")
    for row in results.rows:
        cells = next(c for c in shown if (c["model"], c["path"], c["concurrency"])
                     == (row.model, row.path, str(row.concurrency)))
        assert float(cells["requests/s"]) == pytest.approx(row.outcome.rate, abs=1)


def test_pathcost_times_each_stage_one_caller_and_many(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert pathcost.main(["--requests", "200"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| runtime") or line.startswith("| gateway")]
    stages = {(cells[0].lstrip("| "), int(cells[1])) for cells in rows}
    assert len(stages) == 14 and {c for _, c in stages} == set(pathcost.CONCURRENCY)
    assert all(float(cells[2].rstrip(" |")) > 0 for cells in rows)
    # The CUDA shared-memory rows: copied to the host, gathered, and gathered with an output.
    regions = {name for name, _ in stages if "CUDA region" in name}
    assert len(regions) == 3 and any("copied to the host" in name for name in regions)


def test_scaling_measures_each_process_count_over_both_protocols() -> None:
    needs("h2load", "wrk")
    opts = scaling.parse_args(["--processes", "1,2", "--runtimes", "1", "--duration", "0.5",
                               "--warmup", "0.2", "--concurrency", "8", "--connections", "2",
                               "--generator-threads", "1"])
    children = Children(scaling.LOGS)
    try:
        points = scaling.run(opts, children)
    finally:
        children.close()
    assert not children.problems
    assert sorted((p.processes, p.protocol) for p in points) == [
        (1, "grpc"), (1, "http"), (2, "grpc"), (2, "http")]
    for point in points:
        assert point.outcome.errors == 0 and point.outcome.answered > 0, point
        assert point.outcome.generator.split()[0] == {"grpc": "h2load", "http": "wrk"}[
            point.protocol]
        assert point.rss_mib > 0


def test_gpu_bench_serves_the_half_precision_model_and_compares_it(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    code = gpu_bench.main(["--size", "16", "--precision", "fp16", "--device", "cpu",
                           "--max-batch", "4", "--workers", "1x1", "--gateway-processes", "1",
                           "--concurrency", "4", "--connections", "1", "--generator-threads",
                           "1", "--duration", "0.5", "--warmup", "0.2", "--ceiling-s", "0.1",
                           "--threads", "1", "--out", str(out)])
    assert code == 0
    report = out.read_text()
    assert "Ceiling: " in report and "providers of the in-process session: CPU" in report
    for path in ("runtime (gRPC)", "gateway → runtime, gRPC", "gateway → runtime, HTTP binary"):
        assert f"| 1x1 | {path} |" in report
    config = (gpu_bench.REPOS / "resnet50" / "resnet50" / "config.yaml").read_text()
    assert "datatype: FP16" in config and "device: cpu" in config


def test_gpu_bench_measures_the_path_alone_with_several_images_per_request(tmp_path: Path
                                                                          ) -> None:
    out = tmp_path / "passthrough.md"
    code = gpu_bench.main(["--model", "passthrough", "--rows", "2", "--paths",
                           "grpc,floor-grpc,floor-http",
                           "--size", "16", "--device", "cpu", "--max-batch", "4", "--workers",
                           "1x1", "--gateway-processes", "1", "--concurrency", "4",
                           "--connections", "1", "--generator-threads", "1", "--duration",
                           "0.5", "--warmup", "0.2", "--ceiling-s", "0.1", "--threads", "1",
                           "--out", str(out)])
    assert code == 0
    report = out.read_text()
    assert "# GPU: passthrough" in report and "Served, 2 images per request" in report
    served = [line for line in report.splitlines() if line.startswith("| 1x1 |")]
    assert len(served) == 1 and "| gateway → runtime, gRPC |" in served[0]
    cells = [c.strip() for c in served[0].strip("|").split("|")]
    assert float(cells[3]) > 0 and cells[-1] == "0"  # rows/s, errors
    assert float(cells[9]) <= 4  # mean batch: at most --max-batch rows
    floors = [line for line in report.splitlines() if line.startswith("| - | do-nothing")]
    assert len(floors) == 2, report
    for line in floors:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[3]) > 0 and cells[-1] == "0" and float(cells[12]) > 0  # CPU
    assert "of as many processes as the gateway's (1)" in report
    ratio = re.search(r"1x1 gateway → runtime, gRPC: ([0-9.]+) of the do-nothing grpc", report)
    assert ratio is not None and float(ratio.group(1)) > 0, report


def test_gpu_bench_serves_the_torchscript_model_beside_the_device_alone(tmp_path: Path
                                                                       ) -> None:
    out = tmp_path / "torch.md"
    code = gpu_bench.main(["--backend", "torch", "--paths", "grpc", "--size", "16",
                           "--precision", "fp16", "--device", "cpu", "--max-batch", "4",
                           "--workers", "1x1", "--gateway-processes", "1", "--concurrency", "4",
                           "--connections", "1", "--generator-threads", "1", "--duration",
                           "0.5", "--warmup", "0.2", "--ceiling-s", "0.1", "--threads", "1",
                           "--out", str(out)])
    assert code == 0
    report = out.read_text()
    assert "In-process (`TorchBackend`" in report and "PyTorch" in report
    assert "Alone on the device" in report and "times the device alone" in report
    served = [line for line in report.splitlines() if line.startswith("| 1x1 |")]
    assert len(served) == 1
    cells = [c.strip() for c in served[0].strip("|").split("|")]
    assert float(cells[3]) > 0 and float(cells[5]) > 0 and cells[-1] == "0"
    folder = gpu_bench.REPOS / "resnet50-torch" / "resnet50"
    assert (folder / "1" / "model.pt").is_file()
    config = (folder / "config.yaml").read_text()
    assert "backend: torch" in config and "datatype: FP16" in config


def _sockets(pid: int) -> int:
    fds = f"/proc/{pid}/fd"
    return sum(os.readlink(f"{fds}/{fd}").startswith("socket:") for fd in os.listdir(fds))


def _answered_on_fresh_connections(protocol: str, address: str, count: int) -> list[Any]:
    """`count` connections kept open, each with one answer of the floor on it."""
    if protocol == "grpc":
        channels = [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool",
                                                             1)]) for _ in range(count)]
        for channel in channels:
            pb.ModelInferResponse.FromString(channel.unary_unary(METHOD)(b"", timeout=30))
        return channels
    host, _, port = address.rpartition(":")
    connections = [http.client.HTTPConnection(host, int(port), timeout=30)
                   for _ in range(count)]
    for connection in connections:
        connection.request("POST", "/v2/models/digits/infer", b"{}")
        assert connection.getresponse().read().startswith(b'{"model_name":"digits"')
    return connections


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_floor_of_two_processes_answers_from_both_and_stops_whole(protocol: str) -> None:
    """As many floor processes as gateway processes (bench --gateway-processes 2): both serve
    the one port, and stopping the floor stops both."""
    children = Children(bench.LOGS)
    try:
        address = start_floor(children, protocol, "floor-pair", processes=2)
        pids = list(children.process_cpu_seconds("floor-pair"))
        assert len(pids) == 2
        before = {pid: _sockets(pid) for pid in pids}
        # NOTE: the kernel spreads connections over the two by a hash: 32 all on one process
        # would happen once in 2**31 runs.
        connections = _answered_on_fresh_connections(protocol, address, 32)
        assert all(_sockets(pid) > before[pid] for pid in pids), (before, pids)
        for connection in connections:
            connection.close()
        assert children.stop("floor-pair") == 0
        assert not children.problems
    finally:
        children.close()
