"""`tensorgate ab report`: the report built from store rows, as text, JSON and a picture."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from gateway.answer_store import CLASS, VALUE, AnswerStore, answers_path
from tensorgate import ab, abplot, cli


def synthetic(n: int, accuracy: dict[str, float], seed: int = 1
              ) -> tuple[list[tuple[str, str, float]], list[tuple[str, int, float, float]]]:
    """n answers per version, each with feedback; exactly round(n * accuracy) right."""
    rng = random.Random(seed)
    outcomes, labelled = [], []
    for version, share in accuracy.items():
        right = round(n * share)
        for i in range(n):
            outcomes.append((version, "OK", rng.uniform(0.001, 0.003)))
            truth = float(i % 10)
            labelled.append((version, CLASS, truth if i < right else (truth + 1) % 10, truth))
    return outcomes, labelled


def test_a_better_candidate_is_promoted_with_its_numbers() -> None:
    outcomes, labelled = synthetic(10_000, {"1": 0.90, "2": 0.92})
    outcomes += [("2", "UNAVAILABLE", 0.5)] * 5 + [("1", "DEADLINE_EXCEEDED", 0.5)] * 4
    report = ab.build_report("digits", outcomes, labelled, baseline="1").summary
    one, two = report["versions"]
    assert (one["version"], one["requests"], one["labelled"]) == ("1", 10_004, 10_000)
    assert one["accuracy"] == pytest.approx(0.90)
    assert one["accuracy_ci"][0] < 0.90 < one["accuracy_ci"][1]
    assert (two["requests"], two["errors"]) == (10_005, 5)
    assert two["error_rate"] == pytest.approx(5 / 10_005)
    assert 1.0 <= one["latency_ms"]["p50"] <= 3.0
    assert two["latency_ms"]["p99"] <= 3.0  # five slow failures are under 1 %
    [comparison] = report["comparisons"]
    assert comparison["error_rate_p"] > 0.5
    assert comparison["recommendation"] == "promote"
    assert comparison["accuracy_diff"] == pytest.approx(0.02)
    assert comparison["accuracy_p"] < 1e-5
    assert report["metric"] == "accuracy"


def test_few_samples_are_not_enough_data_and_the_busiest_version_is_the_baseline() -> None:
    outcomes, labelled = synthetic(50, {"1": 0.90})
    more, more_labelled = synthetic(52, {"2": 0.92})
    report = ab.build_report("m", outcomes + more, labelled + more_labelled).summary
    assert report["baseline"] == "2"
    assert report["comparisons"][0]["recommendation"] == "not enough data yet"


def test_regression_answers_report_mean_absolute_error() -> None:
    outcomes = [("1", "OK", 0.001)] * 4
    labelled = [("1", VALUE, 1.0, 2.0), ("1", VALUE, 3.0, 3.5), ("1", VALUE, 0.0, 0.0),
                ("1", VALUE, 5.0, 4.5)]
    report = ab.build_report("r", outcomes, labelled).summary
    assert report["metric"] == "mae"
    [version] = report["versions"]
    assert version["mae"] == pytest.approx(0.5)
    assert "accuracy" not in version


def test_versions_without_feedback_show_requests_and_latency_only() -> None:
    report = ab.build_report("m", [("1", "OK", 0.002), ("10", "OK", 0.004), ("2", "OK", 0.003)],
                             [])
    assert [v["version"] for v in report.summary["versions"]] == ["1", "2", "10"]
    assert all("accuracy" not in v for v in report.summary["versions"])
    text = ab.render(report, 3600, 1_000_000.0)
    assert "not enough data yet" in text
    assert "1 (baseline)" in text


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("30s", 30), ("15m", 900),
                                               ("1h", 3600), ("1.5h", 5400), ("7d", 604800),
                                               ("all", None)])
def test_durations(text: str, seconds: float | None) -> None:
    assert ab.duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1y", "-1h", "h", "1 h 2"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        ab.duration(text)


def _fill(registry: Path) -> None:
    outcomes, labelled = synthetic(300, {"1": 0.80, "2": 0.95})
    with AnswerStore(answers_path(registry)) as store:
        store.write([("digits", f"{v}-{i}", v, "OK", 1e9 + i, lat, CLASS, pred)
                     for i, ((v, _, lat), (_, _, pred, _)) in enumerate(zip(outcomes, labelled))])
        for version in ("1", "2"):
            store.add_feedback("digits", [(f"{v}-{i}", truth) for i, (v, _, _, truth)
                                          in enumerate(labelled) if v == version])


def test_the_command_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "tensorgate.db"
    _fill(registry)
    assert cli.main(["ab", "report", "digits", "--since", "all", "--json", "--registry",
                     str(registry), "--baseline", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [v["labelled"] for v in report["versions"]] == [300, 300]
    assert report["comparisons"][0]["recommendation"] == "promote"


def test_the_command_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "tensorgate.db"
    _fill(registry)
    assert cli.main(["ab", "report", "digits", "--since", "all", "--registry",
                     str(registry)]) == 0
    out = capsys.readouterr().out
    assert "ACCURACY [95% CI]" in out and "promote" in out and "rule:" in out


def test_the_command_explains_what_is_missing(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "tensorgate.db"
    assert cli.main(["ab", "report", "digits", "--registry", str(registry)]) == 2
    assert "no answers recorded yet" in capsys.readouterr().err
    _fill(registry)  # answers from 2001: outside the default hour
    assert cli.main(["ab", "report", "digits", "--registry", str(registry)]) == 1
    assert "--since all" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_get_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(abplot, "available", lambda: False)
    assert cli.main(["ab", "report", "digits", "--registry", str(tmp_path / "t.db"),
                     "--plot", str(tmp_path / "ab.png")]) == 2
    assert "pip install 'tensorgate[plot]'" in capsys.readouterr().err


def test_plot_draws_both_panels(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    registry = tmp_path / "tensorgate.db"
    _fill(registry)
    picture = tmp_path / "ab.png"
    assert cli.main(["ab", "report", "digits", "--since", "all", "--registry", str(registry),
                     "--plot", str(picture)]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
