"""The admin API over HTTP against a live gateway: every route's happy path and each refusal."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.errors import TensorgateError
from common.registry import Registry
from common.registry.versions import Lifecycle
from common.settings import AuthSettings
from gateway.admin_api import AdminApi, Call
from gateway.routes import admin as admin_routes
from tensorgate.lifecycle import sync_repository
from tests.integration.conftest import ROOT, Background, Servers
from tests.waiting import until

ADMIN = "admin-test"


@dataclass
class Admin:
    servers: Servers
    repository: Path
    registry_path: Path
    keys: dict[str, str]

    def call(self, method: str, path: str, body: Any = None, key: str | None = "admin",
             raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["authorization"] = f"Bearer {self.keys[key]}"
        request = urllib.request.Request(f"http://{self.servers.gateway_http}{path}", data=data,
                                         headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    tmp = tmp_path_factory.mktemp("admin")
    repository = tmp / "models"
    shutil.copytree(ROOT / "models" / "digits", repository / "digits")
    shutil.copytree(repository / "digits" / "1", repository / "digits" / "3")
    with Registry(tmp / "registry.db") as registry:
        keys = {"admin": registry.create_key(ADMIN, "admin")[1],
                "user": registry.create_key("user", "infer", ["digits"])[1]}
        sync_repository(registry, repository)
    with Background(repository, auth=AuthSettings(), registry_path=tmp / "registry.db",
                    registry_refresh_s=0.05, model_repository=repository) as servers:
        yield Admin(servers, repository, tmp / "registry.db", keys)


#: Every admin route, as (method, path) from its declaration.
ADMIN_ROUTES = [(method, route.path) for route in admin_routes.router.routes
                for method in getattr(route, "methods", ())]


def concrete(path: str) -> str:
    names = {"{model}": "digits", "{version}": "1", "{name}": "user"}
    return "/".join(names.get(part, part) for part in path.split("/"))


def test_the_admin_routes_are_all_declared() -> None:
    assert len(ADMIN_ROUTES) == 12 and ("PUT", "/v2/admin/models/{model}/traffic") in ADMIN_ROUTES


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_every_route_needs_an_admin_key(admin: Admin, method: str, path: str) -> None:
    status, body = admin.call(method, concrete(path), key=None)
    assert (status, "missing credential" in body["error"]) == (401, True)
    status, body = admin.call(method, concrete(path), key="user")
    assert status == 403 and "admin role" in body["error"]


def test_unknown_admin_paths_are_404_and_wrong_methods_405(admin: Admin) -> None:
    assert admin.call("GET", "/v2/admin/nothing")[0] == 404
    status, body = admin.call("PATCH", "/v2/admin/keys")
    assert status == 405 and "PATCH /v2/admin/keys" in body["error"]


def test_list_models_shows_versions_states_and_aliases(admin: Admin) -> None:
    status, body = admin.call("GET", "/v2/admin/models")
    assert status == 200
    [digits] = [m for m in body["models"] if m["name"] == "digits"]
    assert [(v["version"], v["state"]) for v in digits["versions"]] == [
        ("1", "ready"), ("2", "ready"), ("3", "ready")]
    assert {v["backend"] for v in digits["versions"]} == {"onnx", "torch"}


def test_promote_and_rollback_move_the_alias_and_are_audited(admin: Admin) -> None:
    assert admin.call("POST", "/v2/admin/models/digits/versions/2/promote", {}) == (
        200, {"model": "digits", "alias": "production", "version": "2",
              "previous": None})
    status, body = admin.call("POST", "/v2/admin/models/digits/versions/1/promote",
                              {"to": "production"})
    assert (status, body["previous"]) == (200, "2")
    status, body = admin.call("POST", "/v2/admin/models/digits/rollback")
    assert status == 200
    assert (body["from"], body["to"]) == ("1", "2")
    status, described = admin.call("GET", "/v2/admin/models/digits")
    assert described["aliases"]["production"] == "2"
    shares = {v["version"]: v["traffic_percent"] for v in described["versions"]}
    assert shares == {"1": 0.0, "2": 100.0, "3": 0.0}
    assert described["versions"][0]["signature"]["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": [64]}]
    status, log = admin.call("GET", "/v2/admin/audit?model=digits&limit=3")
    assert [(e["action"], e["actor"], e["before"], e["after"]) for e in log["entries"]] == [
        ("alias.rollback", f"key:{ADMIN}", "1", "2"),
        ("alias.set", f"key:{ADMIN}", "2", "1"),
        ("alias.set", f"key:{ADMIN}", None, "2")]


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("versions/9/promote", {}, 404, "no registered version '9' (registered: 1, 2, 3)"),
    ("versions/1/promote", {"to": "no spaces"}, 400, '"to" (an alias name) must be 1-128'),
    ("versions/1/promote", {"alias": "canary"}, 400, "unknown field(s) 'alias'"),
    ("versions/1/promote", [1], 400, "must be a JSON object"),
    ("rollback", {"alias": "canary"}, 400, "has no canary version to roll back"),
    ("rollback", {"to": "x"}, 400, "unknown field(s) 'to'"),
])
def test_promote_and_rollback_refusals_say_why(admin: Admin, path: str, body: Any, status: int,
                                               message: str) -> None:
    got, answer = admin.call("POST", f"/v2/admin/models/digits/{path}", body)
    assert got == status and message in answer["error"], answer


def test_a_model_without_versions_is_404(admin: Admin) -> None:
    for method, path in (("GET", "/v2/admin/models/nope"),
                         ("POST", "/v2/admin/models/nope/rollback")):
        status, body = admin.call(method, path)
        assert status == 404 and "'nope' has no registered versions" in body["error"]


def test_a_body_that_is_not_json_is_400(admin: Admin) -> None:
    status, body = admin.call("POST", "/v2/admin/models/digits/versions/1/promote",
                              raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]


def test_only_a_ready_version_is_promoted(admin: Admin) -> None:
    with Registry(admin.registry_path) as registry:
        Lifecycle(registry).set_state("digits", "3", "failed", "test", "broken on purpose")
    try:
        status, body = admin.call("POST", "/v2/admin/models/digits/versions/3/promote")
        assert status == 400 and "is failed, not ready" in body["error"]
    finally:
        with Registry(admin.registry_path) as registry:
            Lifecycle(registry).set_state("digits", "3", "ready", "test")


def test_traffic_set_show_and_clear(admin: Admin) -> None:
    policy = {"weights": {"1": 90, "3": 10}, "sticky": "header:X-User",
              "shadow": {"version": "2", "percent": 5}}
    status, body = admin.call("PUT", "/v2/admin/models/digits/traffic", policy)
    assert status == 200
    assert body == {"model": "digits", "weights": {"1": 90, "3": 10}, "sticky": "header:x-user",
                    "shadow": {"version": "2", "percent": 5.0}}
    assert admin.call("GET", "/v2/admin/models/digits/traffic") == (200, body)
    described = admin.call("GET", "/v2/admin/models/digits")[1]
    assert described["traffic"] == body
    assert {v["version"]: v["traffic_percent"] for v in described["versions"]} == {
        "1": 90.0, "2": 0.0, "3": 10.0}
    assert admin.call("DELETE", "/v2/admin/models/digits/traffic") == (200, body)
    for method in ("GET", "DELETE"):
        status, answer = admin.call(method, "/v2/admin/models/digits/traffic")
        assert status == 404 and "no traffic policy" in answer["error"]
    actions = [e["action"] for e in admin.call("GET", "/v2/admin/audit?limit=2")[1]["entries"]]
    assert actions == ["traffic.clear", "traffic.set"]


@pytest.mark.parametrize(("policy", "message"), [
    ({"weights": {"1": 0}}, "must be an integer > 0"),
    ({"weights": {"1": 1.5}}, "must be an integer > 0"),
    ({"weights": {}}, "at least one version=weight"),
    ({"sticky": "key"}, 'needs "weights"'),
    ({"weights": {"1": 1}, "sticky": "cookie"}, "sticky must be 'key', 'sub'"),
    ({"weights": {"1": 1}, "shadow": {"version": "2", "percent": 0}}, "must be in (0, 100]"),
    ({"weights": {"1": 1}, "shadow": {"version": "2"}}, '"shadow" must be null or'),
    ({"weights": {"1": 1}, "mirror": True}, "unknown field(s) 'mirror'"),
])
def test_traffic_is_validated_as_the_cli_validates_it(admin: Admin, policy: dict[str, Any],
                                                      message: str) -> None:
    status, body = admin.call("PUT", "/v2/admin/models/digits/traffic", policy)
    assert status == 400 and message in body["error"], body
    assert admin.call("GET", "/v2/admin/models/digits/traffic")[0] == 404


def test_retire_is_refused_while_the_version_holds_traffic(admin: Admin) -> None:
    assert admin.call("POST", "/v2/admin/models/digits/versions/3/promote",
                      {"to": "canary"})[0] == 200
    status, body = admin.call("DELETE", "/v2/admin/models/digits/versions/3")
    assert status == 400 and "alias canary" in body["error"]
    assert (admin.repository / "digits" / "3").is_dir()
    status, body = admin.call("DELETE", "/v2/admin/models/digits/versions/3?force=perhaps")
    assert status == 400 and "'force' must be true or false" in body["error"]
    status, body = admin.call("DELETE", "/v2/admin/models/digits/versions/3?force=true")
    assert (status, body["state"], body["version"]) == (200, "retired", "3")
    assert (admin.repository / "digits" / ".retired" / "3" / "model.onnx").is_file()
    assert not (admin.repository / "digits" / "3").exists()
    status, body = admin.call("DELETE", "/v2/admin/models/digits/versions/3")
    assert status == 400 and "already retired" in body["error"]
    status, body = admin.call("DELETE", "/v2/admin/models/digits/versions/7")
    assert status == 404 and "no registered version '7'" in body["error"]
    entry = admin.call("GET", "/v2/admin/audit?model=digits&limit=1")[1]["entries"][0]
    assert (entry["action"], entry["target"], entry["actor"]) == (
        "version.retired", "digits:3", f"key:{ADMIN}")


def test_keys_create_use_list_and_revoke(admin: Admin) -> None:
    status, body = admin.call("POST", "/v2/admin/keys",
                              {"name": "ci", "role": "infer", "models": ["digits"], "rate": 5,
                               "burst": 10})
    assert status == 201 and body["secret"].startswith("tg_")
    assert body["key"] | {"key_id": "", "created_at": 0} == {
        "key_id": "", "name": "ci", "role": "infer", "models": ["digits"], "rate": 5.0,
        "burst": 10, "concurrency": 0, "created_at": 0, "revoked": False}
    admin.keys["ci"] = body["secret"]
    until(lambda: admin.call("GET", "/v2/models/digits", key="ci")[0] == 200,
          "the new key picked up by the gateway", every_s=0.05)
    listed = admin.call("GET", "/v2/admin/keys")[1]["keys"]
    assert "ci" in [k["name"] for k in listed]
    assert body["secret"] not in json.dumps(listed)
    status, revoked = admin.call("DELETE", "/v2/admin/keys/ci")
    assert (status, revoked["revoked"]) == (200, True)
    assert "ci" not in [k["name"] for k in admin.call("GET", "/v2/admin/keys")[1]["keys"]]
    everything = admin.call("GET", "/v2/admin/keys?all=true")[1]["keys"]
    assert [k["revoked"] for k in everything if k["name"] == "ci"] == [True]
    status, answer = admin.call("DELETE", "/v2/admin/keys/ci")
    assert status == 400 and "already revoked" in answer["error"]
    actions = [(e["action"], e["target"], e["actor"])
               for e in admin.call("GET", "/v2/admin/audit?limit=2")[1]["entries"]]
    assert actions == [("key.revoke", "key/ci", f"key:{ADMIN}"),
                       ("key.create", "key/ci", f"key:{ADMIN}")]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", "/v2/admin/keys", {"name": ADMIN, "role": "infer"}, 409, "already exists"),
    ("POST", "/v2/admin/keys", {"name": "x", "role": "root"}, 400, "role must be one of"),
    ("POST", "/v2/admin/keys", {"role": "infer"}, 400, 'needs "name"'),
    ("POST", "/v2/admin/keys", {"name": "a b", "role": "infer"}, 400, "key name must be"),
    ("POST", "/v2/admin/keys", {"name": "x", "role": "infer", "burst": -1}, 400, '"burst"'),
    ("POST", "/v2/admin/keys", {"name": "x", "role": "infer", "concurrency": 2**63}, 400,
     '"concurrency"'),
    ("POST", "/v2/admin/keys", {"name": "x", "role": "infer", "models": []}, 400,
     "one or more non-empty globs"),
    ("DELETE", "/v2/admin/keys/nobody", None, 404, "no key named 'nobody'"),
    ("GET", "/v2/admin/keys?all=yes", None, 400, "'all' must be true or false"),
    ("GET", "/v2/admin/audit?limit=0", None, 400, "limit must be a whole number from 1"),
    ("GET", "/v2/admin/audit?limit=ten", None, 400, "limit must be a whole number from 1"),
])
def test_key_and_audit_refusals_say_why(admin: Admin, method: str, path: str, body: Any,
                                        status: int, message: str) -> None:
    got, answer = admin.call(method, path, body)
    assert got == status and message in answer["error"], answer


def test_the_audit_log_filters_by_model_and_limits(admin: Admin) -> None:
    admin.call("POST", "/v2/admin/models/digits/versions/1/promote", {"to": "staging"})
    status, body = admin.call("GET", "/v2/admin/audit?model=digits&limit=1")
    assert status == 200 and len(body["entries"]) == 1
    assert body["entries"][0]["target"] == "digits:staging"
    everything = admin.call("GET", "/v2/admin/audit?limit=1000")[1]["entries"]
    assert any(e["target"] == f"key/{ADMIN}" for e in everything)
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids, reverse=True)


def _refusal(work: Any) -> TensorgateError:
    with pytest.raises(TensorgateError) as caught:
        asyncio.run(work)
    return caught.value


def test_without_a_registry_or_repository_the_api_says_what_is_missing(
        admin: Admin) -> None:
    refused = _refusal(AdminApi(None).models(Call("test")))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no registry" in refused.message
    refused = _refusal(AdminApi(admin.registry_path, None).retire(
        Call("test", {"model": "digits", "version": "2"}, {"force": "true"})))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no local model repository" in refused.message
