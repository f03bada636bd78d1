"""The `serve` supervisor: restart back-off, threads shared between workers, ports claimed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from common.model_config import ConfigError
from common.settings import GatewaySettings
from tensorgate import ports
from tensorgate.supervisor import restart_delay, split_threads


def test_restart_back_off_doubles_to_ten_seconds_and_resets_after_thirty_up() -> None:
    delays = []
    delay = None
    for _ in range(8):
        delay = restart_delay(delay, uptime=1.0)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert restart_delay(10.0, uptime=29.0) == 10.0
    assert restart_delay(10.0, uptime=30.0) == 0.5


def test_threads_are_shared_out_at_least_one_each() -> None:
    assert split_threads(8, 1) == [8]
    assert split_threads(8, 3) == [3, 3, 2]
    assert split_threads(2, 4) == [1, 1, 1, 1]
    assert split_threads(4, 0) == [4]


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ports.RUN_DIR_ENV, str(tmp_path / "run"))
    return tmp_path / "run"


def settings_on(http: int, grpc: int, metrics: int = -1) -> GatewaySettings:
    return GatewaySettings(host="127.0.0.1", http_port=http, grpc_port=grpc, metrics_port=metrics)


def test_probe_12_a_second_claim_of_the_same_ports_names_the_holder(run_dir: Path) -> None:
    with ports.claim(settings_on(0, 0), reserve=True) as first:
        taken = first.settings
        assert 0 not in (taken.http_port, taken.grpc_port)
        with pytest.raises(ConfigError) as refused:
            ports.claim(settings_on(taken.http_port, 0), reserve=True)
        assert str(refused.value) == (
            f"--http-port {taken.http_port}: already served by tensorgate pid {os.getpid()}; "
            "stop it, or choose another port")
    # Released with the claim: the same ports may be claimed again, and no lock file is left.
    with ports.claim(settings_on(taken.http_port, taken.grpc_port), reserve=True):
        pass
    assert list(run_dir.iterdir()) == []


def test_probe_12_one_port_for_two_flags_is_refused(run_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--grpc-port 8123 is also --http-port: give each"):
        ports.claim(settings_on(8123, 8123), reserve=True)
    with pytest.raises(ConfigError, match=r"^--metrics-port 8124 is also --grpc-port"):
        ports.claim(settings_on(8000, 8124, 8124), reserve=False)


def test_probe_15_a_port_another_program_holds_is_one_line_naming_the_flag(
        run_dir: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        for wanted, flag in ((settings_on(port, 0), "--http-port"),
                             (settings_on(0, 0, port), "--metrics-port")):
            with pytest.raises(ConfigError) as refused:
                ports.claim(wanted, reserve=True)
            message = str(refused.value)
            assert message.startswith(f"{flag} {port}: the port is in use on 127.0.0.1 by "
                                      "another program"), message
            assert "\n" not in message
    assert list(run_dir.iterdir()) == []  # nothing half-claimed is left behind
