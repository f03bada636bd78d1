"""The HTTP client limits: CLI flags, their defaults, and the settings they become."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import GatewaySettings
from tensorgate.cli import build_parser, gateway_settings

FIELDS = ("http_header_timeout_s", "http_body_timeout_s", "http_keep_alive_s",
          "http_max_header_bytes", "http_max_connections")


def settings_of(*flags: str, tmp: Path) -> GatewaySettings:
    args = build_parser().parse_args(["gateway", "--registry", str(tmp / "r.db"), *flags])
    return gateway_settings(args, ("127.0.0.1:1",))


def test_the_flag_defaults_are_the_settings_defaults(tmp_path: Path) -> None:
    made, default = settings_of(tmp=tmp_path), GatewaySettings()
    assert [getattr(made, f) for f in FIELDS] == [getattr(default, f) for f in FIELDS]


def test_each_flag_reaches_its_setting(tmp_path: Path) -> None:
    made = settings_of("--http-header-timeout", "2.5", "--http-body-timeout", "7",
                       "--http-keep-alive", "0.5", "--http-max-header-bytes", "8192",
                       "--http-max-connections", "9", tmp=tmp_path)
    assert [getattr(made, f) for f in FIELDS] == [2.5, 7.0, 0.5, 8192, 9]


@pytest.mark.parametrize("flags", [["--http-header-timeout", "0"], ["--http-keep-alive", "-1"],
                                   ["--http-max-connections", "0"]])
def test_a_limit_of_nothing_is_refused(flags: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        settings_of(*flags, tmp=tmp_path)
