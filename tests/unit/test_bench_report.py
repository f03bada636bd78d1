"""The bench report's table of floors and gateway paths run in turn: medians and ratios."""

from __future__ import annotations

from loadtest.report import FLOOR_GRPC, FLOOR_HTTP, GW_BINARY, GW_GRPC, Results, render


def test_each_path_is_divided_by_the_median_of_its_own_protocols_floor() -> None:
    results = Results(machine={}, command="python -m loadtest.bench", threads=2)
    results.alternating = {
        FLOOR_GRPC: [3000.0, 4000.0, 3500.0],
        GW_GRPC: [2100.0, 1900.0, 2000.0],
        FLOOR_HTTP: [10000.0, 12000.0, 14000.0],
        GW_BINARY: [3000.0, 3600.0, 3300.0],
    }
    text = render(results, senders=2)
    table = text.split("## Per-request cost: floors and gateway path in turn")[1]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
            for line in table.splitlines() if line.startswith("| ")}
    assert rows[GW_GRPC][-2:] == ["2000", "0.571 |"]  # 2000 / 3500
    assert rows[GW_BINARY][-2:] == ["3300", "0.275 |"]  # 3300 / 12000
    assert rows[FLOOR_HTTP][-1] == "1 |"


def test_no_table_when_the_floors_were_not_run() -> None:
    text = render(Results(machine={}, command="python -m loadtest.bench", threads=2), senders=2)
    assert "in turn" not in text
