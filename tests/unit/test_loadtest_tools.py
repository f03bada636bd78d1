"""A missing load generator is installed where this process may, and otherwise named with the
package and the command that installs it; the benchmarks stop on it instead of falling back."""

from __future__ import annotations

import pytest

from loadtest import bench, tools


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """No h2load nor wrk on PATH; the apt-get calls made, each as its argument tuple."""
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(tools.shutil, "which",
                        lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)

    def apt(*args: str) -> bool:
        calls.append(args)
        return False

    monkeypatch.setattr(tools, "_apt", apt)
    return calls


def test_without_root_the_message_names_the_package_and_nothing_is_run(
        monkeypatch: pytest.MonkeyPatch, nothing_installed: list[tuple[str, ...]]) -> None:
    monkeypatch.setattr(tools.os, "geteuid", lambda: 1000)
    with pytest.raises(tools.MissingTool) as raised:
        tools.ensure("h2load", "wrk")
    message = str(raised.value)
    assert "needs h2load (apt-get install nghttp2-client)" in message
    assert "needs wrk (apt-get install wrk)" in message and "as root" in message
    assert nothing_installed == []


def test_as_root_both_packages_are_installed_updating_the_lists_once_if_needed(
        monkeypatch: pytest.MonkeyPatch, nothing_installed: list[tuple[str, ...]]) -> None:
    monkeypatch.setattr(tools.os, "geteuid", lambda: 0)
    with pytest.raises(tools.MissingTool, match="apt-get install nghttp2-client"):
        tools.ensure("h2load", "wrk")
    install = ("install", "-y", "--no-install-recommends", "nghttp2-client", "wrk")
    assert nothing_installed == [install, ("update",)]


def test_a_tool_that_apt_installed_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: set[str] = set()
    monkeypatch.setattr(tools.os, "geteuid", lambda: 0)
    monkeypatch.setattr(tools.shutil, "which", lambda name: "/usr/bin/x"
                        if name == "apt-get" or name in installed else None)

    def apt(*args: str) -> bool:
        installed.update({"h2load"} if "nghttp2-client" in args else set())
        return "install" in args

    monkeypatch.setattr(tools, "_apt", apt)
    tools.ensure("h2load")
    assert installed == {"h2load"}


def test_the_bench_stops_at_once_when_a_tool_is_missing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(*tools_asked: str) -> None:
        assert set(tools_asked) == {"h2load", "wrk"}
        raise tools.MissingTool(tools.hint("wrk"))

    monkeypatch.setattr(bench, "ensure", refuse)
    monkeypatch.setattr(bench, "run", lambda opts: pytest.fail("the bench ran without wrk"))
    assert bench.main(["--quick"]) == 2
    assert "needs wrk (apt-get install wrk)" in capsys.readouterr().err

def test_the_make_test_step_says_what_it_skips_and_exits_2(
        monkeypatch: pytest.MonkeyPatch, nothing_installed: list[tuple[str, ...]],
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tools.os, "geteuid", lambda: 1000)
    assert tools.main(["h2load", "wrk"]) == 2
    assert "skipping the tests that drive them: needs h2load" in capsys.readouterr().err
    assert tools.main(["curl"]) == 2
    assert "unknown tool 'curl': expected one of h2load, wrk" in capsys.readouterr().err
