"""Feedback is bounded: per call, per id, per caller and model, in all; only for models the
caller may use and a worker serves. A real gateway and runtime with auth on."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common.registry.store import Registry
from common.settings import AuthSettings
from gateway.answer_store import AnswerStore, answers_path
from gateway.feedback import MAX_ITEMS
from tests.integration.conftest import ROOT, Background, Servers

PER_CALLER, MAX_ROWS = 300, 1000


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Servers, dict, Path]]:
    registry = tmp_path_factory.mktemp("feedback") / "tensorgate.db"
    with Registry(registry) as store:
        keys = {name: store.create_key(name, "infer", ["digits"])[1]
                for name in ("one", "two", "three", "four")}
        keys["any"] = store.create_key("any", "infer", ["*"])[1]
    with Background(ROOT / "models", registry_path=registry, auth=AuthSettings(),
                    feedback_per_caller=PER_CALLER, feedback_max_rows=MAX_ROWS) as running:
        yield running, keys, answers_path(registry)


def post(servers: Servers, key: str, model: str, body: dict
         ) -> tuple[int, dict, str | None]:
    request = urllib.request.Request(
        f"http://{servers.gateway_http}/v2/models/{model}/feedback",
        data=json.dumps(body).encode(), headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read()), None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers.get("Retry-After")


def items(prefix: str, count: int) -> dict:
    return {"feedback": [{"id": f"{prefix}-{i:04d}-" + "x" * 100, "truth": i % 10}
                         for i in range(count)]}


def rows(path: Path, subject: str | None = None) -> int:
    with AnswerStore(path, create=False) as store:
        if subject is None:
            return store.conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        return store.conn.execute("SELECT COUNT(*) FROM feedback WHERE subject = ?",
                                  (subject,)).fetchone()[0]


def test_probe_09_feedback_only_for_models_served_and_allowed(
        bounded: tuple[Servers, dict, Path]) -> None:
    servers, keys, _ = bounded
    status, body, _ = post(servers, keys["any"], "nosuch", {"id": "a", "truth": 1})
    assert status == 404 and "nosuch" in body["error"], body
    status, body, _ = post(servers, keys["one"], "secret", {"id": "a", "truth": 1})
    assert status == 403 and "secret" in body["error"], body
    status, body, _ = post(servers, keys["any"], "../etc", {"id": "a", "truth": 1})
    assert status in (400, 404), body
    channel = grpc.insecure_channel(servers.gateway_grpc)
    call = channel.unary_unary("/tensorgate.Feedback/Post")
    with pytest.raises(grpc.RpcError) as caught:
        call(json.dumps({"model": "nosuch", "id": "a", "truth": 1}).encode(), timeout=60,
             metadata=(("authorization", f"Bearer {keys['any']}"),))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()


@pytest.mark.parametrize("request_id", ["x" * 129, "with space", "caf\u00e9", "tab\there"])
def test_probe_09_ids_are_bounded_printable_ascii(bounded: tuple[Servers, dict, Path],
                                                  request_id: str) -> None:
    servers, keys, _ = bounded
    status, body, _ = post(servers, keys["one"], "digits", {"id": request_id, "truth": 1})
    assert status == 400 and "at most 128 printable ASCII" in body["error"], body


def test_probe_09_a_flood_of_feedback_keeps_the_file_bounded(
        bounded: tuple[Servers, dict, Path]) -> None:
    servers, keys, path = bounded
    status, body, _ = post(servers, keys["one"], "digits", items("big", MAX_ITEMS + 1))
    assert status == 400 and f"at most {MAX_ITEMS} a call" in body["error"], body
    for round_ in range(6):  # 1,500 rows posted by one key: it keeps its newest 300
        status, body, _ = post(servers, keys["one"], "digits", items(f"one{round_}", 250))
        assert status == 200 and body["recorded"] == 250, body
    assert rows(path, "key:one") == PER_CALLER
    for name in ("two", "three"):
        for round_ in range(2):
            assert post(servers, keys[name], "digits", items(f"{name}{round_}", 250))[0] == 200
    assert rows(path) == 3 * PER_CALLER
    # Four callers at their own caps would pass MAX_ROWS: the fourth is refused, nothing kept.
    assert post(servers, keys["four"], "digits", items("four0", 100))[0] == 200
    status, body, retry_after = post(servers, keys["four"], "digits", items("four1", 250))
    assert status == 429 and "feedback for model 'digits' not stored" in body["error"], body
    assert retry_after is not None and int(retry_after) >= 1
    assert rows(path, "key:four") == 100 and rows(path) == 3 * PER_CALLER + 100
    # A caller at its cap replacing its own rows is still served.
    assert post(servers, keys["one"], "digits", items("one9", 250))[0] == 200
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    assert size < 8 << 20, size  # the probe grew it to 128 MB
