"""The bench report's table of floors and gateway paths run in turn: medians and ratios."""

from __future__ import annotations

from loadtest.inturn import Turns
from loadtest.report import (
    FLOOR_GRPC,
    FLOOR_HTTP,
    GW_BINARY,
    GW_GRPC,
    RUNTIME,
    Results,
    render,
)


def test_each_path_is_divided_by_the_median_of_its_own_protocols_floor() -> None:
    results = Results(machine={}, command="python -m loadtest.bench", threads=2)
    results.alternating = {
        FLOOR_GRPC: [3000.0, 4000.0, 3500.0],
        GW_GRPC: [2100.0, 1900.0, 2000.0],
        FLOOR_HTTP: [10000.0, 12000.0, 14000.0],
        GW_BINARY: [3000.0, 3600.0, 3300.0],
    }
    text = render(results)
    table = text.split("## Per-request cost: floors and gateway path in turn")[1]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
            for line in table.splitlines() if line.startswith("| ")}
    assert rows[GW_GRPC][-2:] == ["2000", "0.571 |"]  # 2000 / 3500
    assert rows[GW_BINARY][-2:] == ["3300", "0.275 |"]  # 3300 / 12000
    assert rows[FLOOR_HTTP][-1] == "1 |"


def test_no_table_when_the_floors_were_not_run() -> None:
    text = render(Results(machine={}, command="python -m loadtest.bench", threads=2))
    assert "in turn" not in text


def test_a_heavy_models_paths_are_divided_by_its_ceiling_run_in_turn() -> None:
    results = Results(machine={}, command="python -m loadtest.bench", threads=2)
    ceiling = "in-process ceiling (batch 64)"
    results.ceiling_turns["resnet50"] = Turns(
        rates={ceiling: [200.0, 180.0, 190.0], GW_GRPC: [170.0, 160.0, 171.0]},
        p50_ms={ceiling: [300.0, 320.0, 310.0], GW_GRPC: [350.0, 360.0, 340.0]},
        p99_ms={ceiling: [330.0, 340.0, 335.0], GW_GRPC: [800.0, 1300.0, 900.0]})
    text = render(results)
    table = text.split("## Batching efficiency: resnet50's ceiling and gateway path in turn")[1]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
            for line in table.splitlines() if line.startswith("| ")}
    assert rows["resnet50: path"][1] == "round 1 rows/s"
    assert rows[GW_GRPC][-4:] == ["170", "0.895", "900.0", "2.9 |"]  # 170/190; 900/310
    assert rows[ceiling][-4:] == ["190", "1", "335.0", "- |"]


def test_the_gateways_added_latency_in_turn_is_the_difference_of_median_p50s() -> None:
    results = Results(machine={}, command="python -m loadtest.bench", threads=2)
    results.latency_turns = Turns(
        rates={RUNTIME: [900.0] * 3, GW_GRPC: [800.0] * 3},
        p50_ms={RUNTIME: [1.0, 1.2, 1.1], GW_GRPC: [1.3, 1.15, 2.0]},
        p99_ms={RUNTIME: [3.0] * 3, GW_GRPC: [4.0] * 3})
    text = render(results)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
            for line in text.splitlines() if line.startswith("| ")}
    assert rows[RUNTIME][-2:] == ["1100", "0 |"]
    assert rows[GW_GRPC][-2:] == ["1300", "200 |"]  # medians 1.3 - 1.1 ms
