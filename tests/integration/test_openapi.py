"""schemathesis against a live gateway and runtime: no 5xx, and every answer fits /v2/openapi.json.

Run with auth on (an admin key, a registry) and off (no registry); examples bounded per operation.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from common.registry import Registry
from common.settings import AuthSettings
from gateway.control import build_control
from gateway.openapi import build_document
from gateway.routes import admin
from tensorgate.lifecycle import sync_repository
from tests.integration.conftest import ROOT, Background

#: What every answer is held to: no server error, a documented status, media type and body.
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]
EXAMPLES_WITH_AUTH = 12
EXAMPLES_WITHOUT_AUTH = 4
ROWS = [[0.5] * 64]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy: generated repository loads and unloads must not touch the shipped models."""
    repository = tmp_path_factory.mktemp("openapi") / "models"
    shutil.copytree(ROOT / "models" / "digits", repository / "digits")
    return repository


@pytest.fixture(scope="module")
def secured(repository: Path) -> Iterator[tuple[str, dict[str, str]]]:
    registry_path = repository.parent / "registry.db"
    with Registry(registry_path) as registry:
        # NOTE: a name no generated path will hit, so DELETE /v2/admin/keys/{name} cannot
        # revoke the key the run depends on.
        secret = registry.create_key("schemathesis-admin-5f3c", "admin")[1]
        sync_repository(registry, repository)
    with Background(repository, auth=AuthSettings(), registry_path=registry_path,
                    registry_refresh_s=0.05, model_repository=repository) as servers:
        yield f"http://{servers.gateway_http}", {"authorization": f"Bearer {secret}"}


def _schema(base_url: str) -> Any:
    # Loaded from the live gateway: the description must be served, without a key.
    return schemathesis.openapi.from_url(f"{base_url}/v2/openapi.json")


def _fuzz(base_url: str, headers: dict[str, str], examples: int) -> list[str]:
    """Generated requests for every operation; the failures, one line per operation."""
    failures = []
    for result in _schema(base_url).get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), print_blob=False)
        def check(case: Any) -> None:
            case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)

        try:
            check()
        except Exception as exc:  # schemathesis raises a group of check failures
            failures.append(f"{operation.label}: {exc}")
    return failures


def _known(base_url: str, headers: dict[str, str]) -> None:
    """Requests that succeed, so the 2xx schemas are checked against real answers too."""
    schema = _schema(base_url)
    infer = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": ROWS}]}
    cases = [
        ("/v2/models/{model_name}/infer", "POST", {"model_name": "digits"}, None, infer),
        ("/v2/models/{model_name}", "GET", {"model_name": "digits"}, None, None),
        ("/v2/models/{model_name}/config", "GET", {"model_name": "digits"}, None, None),
        ("/v2/models/{model_name}/stats", "GET", {"model_name": "digits"}, None, None),
        ("/v2/models/{model_name}/versions/{model_version}/ready", "GET",
         {"model_name": "digits", "model_version": "1"}, None, None),
        ("/v2/repository/index", "POST", None, None, {"ready": True}),
        ("/v2/admin/models", "GET", None, None, None),
        ("/v2/admin/models/{model}", "GET", {"model": "digits"}, None, None),
        ("/v2/admin/keys", "GET", None, {"all": True}, None),
        ("/v2/admin/audit", "GET", None, {"limit": 5}, None),
    ]
    for path, method, params, query, body in cases:
        operation = schema[path][method]
        extra = {} if body is None else {"body": body, "media_type": "application/json"}
        case = operation.Case(path_parameters=params, query=query, **extra)
        answer = case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)
        assert answer.status_code == 200, (path, answer.text)


def test_admin_key_on_a_secured_gateway(secured: tuple[str, dict[str, str]]) -> None:
    base_url, headers = secured
    _known(base_url, headers)
    assert _fuzz(base_url, headers, EXAMPLES_WITH_AUTH) == []


def test_an_open_gateway_without_a_registry(repository: Path) -> None:
    with Background(repository) as servers:
        base_url = f"http://{servers.gateway_http}"
        assert _fuzz(base_url, {}, EXAMPLES_WITHOUT_AUTH) == []


def test_the_description_covers_every_route_and_is_valid() -> None:
    document = build_document(build_control(None))  # type: ignore[arg-type]
    for route in admin.router.routes:
        assert isinstance(route, APIRoute)
        for method in route.methods:
            operation = document["paths"][route.path][method.lower()]
            assert str(route.status_code or 200) in operation["responses"]
            assert "422" not in operation["responses"]
    for path in ("/v2/models/{model_name}/infer",
                 "/v2/models/{model_name}/versions/{model_version}/infer"):
        infer = document["paths"][path]["post"]
        body = infer["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body.rsplit("/", 1)[1] in document["components"]["schemas"]
        assert "application/octet-stream" in infer["responses"]["200"]["content"]
    schemathesis.openapi.from_dict(document).validate()
