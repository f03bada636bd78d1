"""Issue 21's probe, in process: metric labels stay bounded, new keys work at once, a registry
file deleted or replaced under the gateway is never silently re-created or trusted."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from common.errors import TensorgateError
from common.registry import Registry, RegistryError
from common.registry import watch as watch_module
from common.registry.versions import Lifecycle, VersionRecord
from common.registry.watch import RegistryWatcher
from common.settings import AuthSettings, GatewaySettings
from gateway.admin_api import AdminApi, Call
from gateway.auth import UNKNOWN_KEY, Authenticator
from gateway.context import RequestContext
from gateway.health import Health
from gateway.metrics import GatewayMetrics
from gateway.pipeline import OTHER, Pipeline
from gateway.quota import Quotas
from gateway.route import Router

#: Distinct model names each kind of caller sends.
NAMES = 10_000


def series(metrics: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every (sample name, labels) the registry would export."""
    return {(sample.name, tuple(sorted(sample.labels.items())))
            for family in metrics.collect() for sample in family.samples}


async def _send_many(pipeline: Pipeline, secret: str | None, prefix: str) -> set[str]:
    headers = {} if secret is None else {"authorization": f"Bearer {secret}"}
    codes = set()
    for i in range(NAMES):
        try:
            call = RequestContext(f"{prefix}-{i}", "", "http", headers, timeout_s=1.0)
            await pipeline.infer(call, b"")
        except TensorgateError as exc:
            codes.add(exc.code.name)
    return codes


def test_probe_03_caller_chosen_model_names_never_become_metric_series(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry.db") as registry:
        _, user = registry.create_key("user", "infer", ["zz-*"])
        _, admin = registry.create_key("admin", "admin")
    watcher = RegistryWatcher(tmp_path / "registry.db")
    metrics = CollectorRegistry()
    gateway_metrics = GatewayMetrics(metrics)
    settings = GatewaySettings(auth=AuthSettings())

    async def main() -> list[set[str]]:
        # No runtime worker: an admitted request fails in forward, as an unknown model would.
        pipeline = Pipeline(settings, Router(Health(settings, gateway_metrics)), gateway_metrics,
                            lambda: watcher.snapshot, Quotas(None))
        before = len(series(metrics))
        codes = [await _send_many(pipeline, None, "zz"),
                 await _send_many(pipeline, user, "zz"),  # allowed names, none served
                 await _send_many(pipeline, user, "other"),  # names the key may not use
                 await _send_many(pipeline, admin, "zz" + "x" * 30_000)]
        await pipeline.close()
        grown = len(series(metrics)) - before
        # One model label for all of them, a few codes: 4 codes x (1 counter + 15 buckets
        # + sum + count + created...) stays far under the 40,000 names sent.
        assert grown <= 120, grown
        return codes

    try:
        codes = asyncio.run(main())
    finally:
        watcher.close()
    assert codes[0] == {"UNAUTHENTICATED"} and "PERMISSION_DENIED" in codes[2]
    models = {dict(labels).get("model") for _, labels in series(metrics)} - {None}
    assert models == {OTHER}


def test_probe_19_a_key_written_by_another_process_works_on_its_first_request(
        tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    watcher = RegistryWatcher(path, interval=3600)  # no poll runs: only the eager refresh
    authenticator = Authenticator(AuthSettings(), lambda: watcher.snapshot,
                                  refresh=watcher.refresh_if_due)
    try:
        with Registry(path) as cli:  # `tensorgate keys create` while the gateway runs
            _, secret = cli.create_key("ci", "infer")
        assert authenticator.authenticate(f"Bearer {secret}").subject == "key:ci"
    finally:
        watcher.close()


def test_probe_19_unknown_keys_cost_at_most_one_registry_read_per_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    now = [1000.0]
    monkeypatch.setattr(watch_module.time, "monotonic", lambda: now[0])
    watcher = RegistryWatcher(path, interval=3600)
    reads = []
    real = watcher._refresh
    monkeypatch.setattr(watcher, "_refresh", lambda sweep: reads.append(1) or real(sweep))
    authenticator = Authenticator(AuthSettings(), lambda: watcher.snapshot,
                                  refresh=watcher.refresh_if_due)
    try:
        for _ in range(1000):
            with pytest.raises(TensorgateError, match=UNKNOWN_KEY):
                authenticator.authenticate("Bearer tg_not-a-key")
        assert len(reads) == 1
        now[0] += watch_module.EAGER_REFRESH_S
        with pytest.raises(TensorgateError, match=UNKNOWN_KEY):
            authenticator.authenticate("Bearer tg_not-a-key")
        assert len(reads) == 2
    finally:
        watcher.close()


def test_probe_19_a_key_created_through_the_admin_api_works_when_the_answer_arrives(
        tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    watcher = RegistryWatcher(path, interval=3600)
    api = AdminApi(path, guard=watcher.check_file, after_write=watcher.refresh_now)
    authenticator = Authenticator(AuthSettings(), lambda: watcher.snapshot)  # no eager refresh
    try:
        answer = asyncio.run(api.create_key(Call("test", body={"name": "ci", "role": "infer"})))
        assert authenticator.authenticate(f"Bearer {answer['secret']}").subject == "key:ci"
    finally:
        watcher.close()


def test_probe_07_a_running_registry_is_never_created_again(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(RegistryError, match="does not exist"):
        Registry(path, create=False)
    assert not path.exists()
    api = AdminApi(path)
    with pytest.raises(TensorgateError) as refused:
        asyncio.run(api.keys(Call("test")))
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert not path.exists()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_probe_07_a_deleted_or_replaced_registry_file_is_refused_and_reported_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str) -> None:
    path = tmp_path / "registry.db"
    with Registry(path) as registry:
        registry.create_key("old", "infer")
    states: list[bool] = []
    watcher = RegistryWatcher(path, interval=3600, on_state=states.append)
    api = AdminApi(path, guard=watcher.check_file, after_write=watcher.refresh_now)
    kept = tmp_path / "kept.db"
    try:
        os.replace(path, kept)
        if how == "replaced":
            shutil.copy(kept, path)
        with caplog.at_level(logging.ERROR, logger=watch_module.__name__):
            for _ in range(3):
                assert watcher.refresh() is False
        assert [r.getMessage() for r in caplog.records].count(
            caplog.records[0].getMessage()) == 1 and f"was {how}" in caplog.text
        assert states == [True, False]
        with pytest.raises(TensorgateError) as refused:
            asyncio.run(api.revoke_key(Call("test", params={"name": "old"})))
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert f"was {how}" in refused.value.message
        assert "admin calls are refused until it is back" in refused.value.message
        digest = next(iter(watcher.snapshot.keys))
        assert watcher.snapshot.keys[digest].name == "old"  # the last good snapshot serves
        assert (how == "replaced") == path.exists()
        os.replace(kept, path)
        watcher.refresh()
        assert states == [True, False, True] and watcher.problem is None
        assert asyncio.run(api.revoke_key(Call("test", params={"name": "old"})))["revoked"]
        assert watcher.snapshot.keys == {}
    finally:
        watcher.close()


def test_probe_03_a_served_model_is_still_labelled_by_its_name(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry.db") as registry:
        _, admin = registry.create_key("admin", "admin")
        Lifecycle(registry).add(VersionRecord("digits", "1", "0" * 64, 1, "onnx", {}, "test",
                                              0.0, "", "ready"), "test")
    watcher = RegistryWatcher(tmp_path / "registry.db")
    metrics = CollectorRegistry()
    gateway_metrics = GatewayMetrics(metrics)
    settings = GatewaySettings(auth=AuthSettings())

    async def main() -> None:
        pipeline = Pipeline(settings, Router(Health(settings, gateway_metrics)), gateway_metrics,
                            lambda: watcher.snapshot, Quotas(None))
        for model in ("digits", "nothing"):
            with pytest.raises(TensorgateError):
                await pipeline.infer(RequestContext(model, "", "grpc",
                                                    {"authorization": f"Bearer {admin}"},
                                                    timeout_s=1.0), b"")
        await pipeline.close()

    try:
        asyncio.run(main())
    finally:
        watcher.close()
    labelled = {dict(labels)["model"] for name, labels in series(metrics)
                if name == "tensorgate_requests_total"}
    assert labelled == {"digits", OTHER}


def test_probe_06_the_cli_path_refuses_a_policy_naming_a_version_not_ready(tmp_path: Path
                                                                          ) -> None:
    with Registry(tmp_path / "registry.db") as registry:
        lifecycle = Lifecycle(registry)
        for version, state in (("1", "ready"), ("2", "failed")):
            lifecycle.add(VersionRecord("digits", version, "0" * 64, 1, "onnx", {}, "test", 0.0,
                                        "", state), "test")
        for weights, shadow in (({"7": 100}, None), ({"2": 1}, None), ({"1": 1}, ("2", 5.0))):
            with pytest.raises(RegistryError, match=r"its ready versions: 1$"):
                registry.set_traffic("digits", weights, shadow=shadow)
        assert registry.get_traffic("digits") is None
        for name in ("..", "\x00", "a/b", "x" * 129):
            with pytest.raises(RegistryError, match="model name must be 1-128 characters"):
                registry.set_traffic(name, {"1": 1})
        # A model the registry does not track is served from the repository as it is.
        assert registry.set_traffic("other", {"3": 1}).weights == (("3", 1),)


def test_probe_06_versions_and_aliases_are_registered_only_under_valid_names(tmp_path: Path
                                                                            ) -> None:
    with Registry(tmp_path / "registry.db") as registry:
        lifecycle = Lifecycle(registry)
        for model, version in (("..", "1"), ("a\x00", "1"), ("digits", "../1"), ("digits", "0")):
            with pytest.raises(RegistryError, match="registered as <model>:<number>"):
                lifecycle.add(VersionRecord(model, version, "0" * 64, 1, "onnx", {}, "test",
                                            0.0, "", "ready"), "test")
        lifecycle.add(VersionRecord("digits", "1", "0" * 64, 1, "onnx", {}, "test", 0.0, "",
                                    "ready"), "test")
        with pytest.raises(RegistryError, match="an alias name must be"):
            lifecycle.promote("digits", "1", "test", "../x")
        assert lifecycle.aliases("digits") == {}


def test_probe_03_a_shed_request_labels_its_model_only_when_served(tmp_path: Path) -> None:
    Registry(tmp_path / "registry.db").close()
    watcher = RegistryWatcher(tmp_path / "registry.db")
    metrics = CollectorRegistry()
    gateway_metrics = GatewayMetrics(metrics)
    settings = GatewaySettings(auth=AuthSettings(), max_in_flight=1)

    async def main() -> set[str]:
        pipeline = Pipeline(settings, Router(Health(settings, gateway_metrics)), gateway_metrics,
                            lambda: watcher.snapshot, Quotas(None))
        pipeline._answered.add("digits")  # as if it had answered OK before
        codes = set()
        for model in ("digits", *(f"zz-{i}" for i in range(100))):
            pipeline.admission.in_flight = pipeline.admission.limit  # the bound is reached
            with pytest.raises(TensorgateError) as shed:
                await pipeline.infer(RequestContext(model, "", "http", {}, timeout_s=1.0), b"")
            codes.add(shed.value.code.name)
        await pipeline.close()
        return codes

    try:
        assert asyncio.run(main()) == {"RESOURCE_EXHAUSTED"}
    finally:
        watcher.close()
    labelled = {dict(labels)["model"] for name, labels in series(metrics)
                if name == "tensorgate_shed_requests_total"}
    assert labelled == {"digits", OTHER}


def test_probe_06_a_version_that_stops_being_ready_is_released_by_the_gateway(
        tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    with Registry(path) as registry:
        lifecycle = Lifecycle(registry)
        for version in ("1", "2"):
            lifecycle.add(VersionRecord("digits", version, "0" * 64, 1, "onnx", {}, "test", 0.0,
                                        "", "ready"), "test")
        lifecycle.promote("digits", "2", "test")
        registry.set_traffic("digits", {"1": 1, "2": 1}, shadow=("2", 5.0))
    watcher = RegistryWatcher(path, interval=3600, sweep=True)
    try:
        with Registry(path) as cli:  # `tensorgate models` marks it failed while we serve
            Lifecycle(cli).set_state("digits", "2", "failed", "cli", "bad answers")
        watcher.refresh()  # sees the change
        watcher.refresh()  # releases what names version 2
        snapshot = watcher.snapshot
        assert "digits" not in snapshot.production
        policy = snapshot.traffic["digits"]
        assert (policy.weights, policy.shadow_version) == ((("1", 1),), None)
        with Registry(path) as registry:
            entries = registry.audit_log("digits", limit=2)
        assert {e.action for e in entries} == {"alias.clear", "traffic.set"}
        assert all(e.after["reason"] == "version digits:2 is failed" for e in entries)
    finally:
        watcher.close()


def test_probe_07_a_gateway_without_the_repository_sweeps_no_version(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    with Registry(path) as registry:
        Lifecycle(registry).add(VersionRecord("digits", "1", "0" * 64, 1, "onnx", {}, "test",
                                              0.0, "", "ready"), "test")
    (tmp_path / "elsewhere").mkdir()  # this host's --model-repository holds no digits
    watcher = RegistryWatcher(path, interval=3600, repository=tmp_path / "elsewhere", sweep=True)
    try:
        watcher.refresh()
        assert watcher.snapshot.ready == {"digits": ("1",)}
        (tmp_path / "elsewhere" / "digits" / "2").mkdir(parents=True)  # now it does, without 1
        watcher.refresh()
        watcher.refresh()
        assert watcher.snapshot.ready == {}
    finally:
        watcher.close()
