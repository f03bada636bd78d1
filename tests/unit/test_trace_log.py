"""The trace settings' sampling rule: level, 1 in trace_rate, a count going down, per model."""

from __future__ import annotations

import pytest

from common.errors import TensorgateError
from gateway.trace_log import MAX_MODELS, TraceSettings


def taken(settings: TraceSettings, model: str, calls: int) -> list[bool]:
    return [settings.sample(model) for _ in range(calls)]


def test_rate_takes_the_first_of_every_n_and_count_bounds_them() -> None:
    settings = TraceSettings()
    assert taken(settings, "a", 3) == [True] * 3  # defaults: every request
    settings.update({"trace_rate": "3", "trace_count": "2"})
    assert taken(settings, "a", 9) == [True, False, False, True, False, False, False, False,
                                        False]
    assert settings.shown()["trace_count"] == "0"


def test_a_model_overrides_key_by_key_and_null_clears_back_to_global() -> None:
    settings = TraceSettings()
    settings.update({"trace_level": ["OFF"]}, "quiet")
    assert taken(settings, "quiet", 3) == [False] * 3 and taken(settings, "other", 2) == [True] * 2
    settings.update({"trace_rate": "2"})
    assert settings.shown("quiet")["trace_rate"] == "2"  # not set there: follows the global one
    settings.update({"trace_level": None}, "quiet")
    assert settings.own == {} and settings.shown("quiet") == settings.shown()


def test_a_models_own_count_is_its_own_and_the_global_one_is_shared() -> None:
    settings = TraceSettings()
    settings.update({"trace_count": "1"}, "mine")
    settings.update({"trace_count": "2"})
    assert taken(settings, "mine", 3) == [True, False, False]
    assert taken(settings, "x", 1) + taken(settings, "y", 2) == [True, True, False]


def test_adopting_the_same_state_keeps_counts_and_a_change_applies() -> None:
    settings = TraceSettings()
    settings.update({"trace_count": "3"}, "m")
    settings.sample("m")
    settings.adopt(settings.state())
    assert settings.shown("m")["trace_count"] == "2"
    settings.adopt({"global": {"trace_level": "OFF", "trace_rate": 1, "trace_count": -1},
                    "models": {}})
    assert settings.own == {} and taken(settings, "m", 2) == [False, False]


def test_the_model_table_is_bounded() -> None:
    settings = TraceSettings()
    for i in range(MAX_MODELS):
        settings.update({"trace_rate": "2"}, f"m{i}")
    with pytest.raises(TensorgateError, match="clear one"):
        settings.update({"trace_rate": "2"}, "one-more")
    settings.update({"trace_rate": None}, "m0")
    settings.update({"trace_rate": "2"}, "one-more")
