"""The command line's defaults are the settings dataclasses' defaults: each is written once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from common.settings import AuthSettings, GatewaySettings, RuntimeSettings
from tensorgate import cli


def _defaults(command: str, tmp_path: Path) -> dict[str, object]:
    return vars(cli.build_parser().parse_args([command, "--registry", str(tmp_path / "r.db")]))


@pytest.mark.parametrize("command", ["serve", "gateway"])
def test_gateway_flags_default_to_gateway_settings(command: str, tmp_path: Path) -> None:
    args = cli.build_parser().parse_args([command, "--registry", str(tmp_path / "r.db")])
    built = cli.gateway_settings(args, GatewaySettings.runtime_endpoints)
    # What the command line decides itself: where the registry and repository are.
    expected = dataclasses.replace(GatewaySettings(), registry_path=tmp_path / "r.db",
                                   model_repository=RuntimeSettings.model_repository)
    assert built == expected


def test_runtime_flags_default_to_runtime_settings(tmp_path: Path) -> None:
    args = _defaults("runtime", tmp_path)
    d = RuntimeSettings()
    assert (args["model_repository"], args["listen"], args["lane"], args["threads"],
            args["inline_compute_us"], args["metrics_port"], args["triton_metrics"],
            args["drain_timeout"]) == (d.model_repository, d.listen, d.lane, d.threads,
                                       d.inline_compute_us, d.metrics_port, d.triton_metrics,
                                       d.drain_timeout_s)


def test_help_texts_show_the_settings_defaults() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a.choices, dict))
    assert isinstance(commands.choices, dict)
    text = " ".join(commands.choices["gateway"].format_help().split())
    gateway, auth = GatewaySettings(), AuthSettings()
    assert f"HTTP port ({gateway.http_port})" in text
    assert f"the oldest go first ({gateway.answers_max_rows})" in text
    assert f"in seconds ({auth.jwt_leeway_s:g})" in text
    assert f"({gateway.http_max_header_bytes})" in text
    assert "slower than this (0: off)" in text
    runtime = " ".join(commands.choices["runtime"].format_help().split())
    assert f"({RuntimeSettings().lane})" in runtime and "host (-1: off)" in runtime
