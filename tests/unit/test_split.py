"""The split stage: sticky weighted assignment, minimal reshuffles, subjects, version rewriting."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from common.policy import ANONYMOUS, Principal, TrafficPolicy
from common.proto import grpc_service_pb2 as pb
from gateway.peek import model_and_version
from gateway.rewrite import with_version
from gateway.split import Splitter, choose, subject_of

SUBJECTS = [f"key:user-{i}" for i in range(10_000)]


def _policy(*weights: tuple[str, int], sticky: str = "key") -> TrafficPolicy:
    return TrafficPolicy(model="digits", weights=weights, sticky=sticky)


def _assign(policy: TrafficPolicy) -> dict[str, str]:
    return {subject: choose(policy, subject) for subject in SUBJECTS}


def _shares(assignment: dict[str, str]) -> dict[str, float]:
    counts = Counter(assignment.values())
    return {version: count / len(assignment) for version, count in counts.items()}


@pytest.mark.parametrize(
    "weights",
    [(("1", 90), ("2", 10)), (("1", 50), ("2", 50)), (("1", 70), ("2", 20), ("3", 10))],
)
def test_subjects_are_shared_by_weight(weights: tuple[tuple[str, int], ...]) -> None:
    shares = _shares(_assign(_policy(*weights)))
    total = sum(weight for _, weight in weights)
    assert set(shares) == {version for version, _ in weights}
    for version, weight in weights:
        assert shares[version] == pytest.approx(weight / total, abs=0.01)


def test_a_subject_keeps_its_version() -> None:
    policy = _policy(("1", 50), ("2", 50))
    first = _assign(policy)
    again = _assign(_policy(("1", 50), ("2", 50)))  # an equal policy from a new snapshot
    assert first == again
    assert all(choose(policy, subject) == first[subject] for subject in SUBJECTS[:500])


def test_a_weight_change_moves_only_the_share_it_must() -> None:
    before = _assign(_policy(("1", 90), ("2", 10)))
    after = _assign(_policy(("1", 80), ("2", 20)))
    moved = [subject for subject in SUBJECTS if before[subject] != after[subject]]
    assert len(moved) / len(SUBJECTS) == pytest.approx(0.10, abs=0.01)
    assert all(before[subject] == "1" and after[subject] == "2" for subject in moved)


def test_a_new_version_takes_subjects_only_onto_itself() -> None:
    before = _assign(_policy(("1", 70), ("2", 30)))
    after = _assign(_policy(("1", 70), ("2", 30), ("3", 25)))
    moved = [subject for subject in SUBJECTS if before[subject] != after[subject]]
    assert moved
    assert all(after[subject] == "3" for subject in moved)
    assert len(moved) / len(SUBJECTS) == pytest.approx(25 / 125, abs=0.01)


def test_the_order_of_the_weights_does_not_matter() -> None:
    forward = _assign(_policy(("1", 70), ("2", 20), ("3", 10)))
    backward = _assign(_policy(("3", 10), ("1", 70), ("2", 20)))
    assert forward == backward


def test_the_model_name_is_part_of_the_hash() -> None:
    weights = (("1", 50), ("2", 50))
    here = _assign(TrafficPolicy(model="digits", weights=weights))
    there = _assign(TrafficPolicy(model="letters", weights=weights))
    agreeing = sum(here[subject] == there[subject] for subject in SUBJECTS) / len(SUBJECTS)
    assert agreeing == pytest.approx(0.5, abs=0.03)


def test_an_empty_subject_is_weighted_random() -> None:
    policy = _policy(("1", 70), ("2", 20), ("3", 10))
    rng = random.Random(7)
    counts = Counter(choose(policy, "", rng) for _ in range(10_000))
    assert counts["1"] / 10_000 == pytest.approx(0.70, abs=0.01)
    assert counts["2"] / 10_000 == pytest.approx(0.20, abs=0.01)
    assert counts["3"] / 10_000 == pytest.approx(0.10, abs=0.01)


def test_the_splitter_gives_anonymous_callers_random_versions_and_caches_nothing() -> None:
    splitter = Splitter()
    policy = _policy(("1", 50), ("2", 50))
    assert {splitter.choose(policy, "") for _ in range(200)} == {"1", "2"}
    assert splitter.cached("digits") == 0


def test_the_cache_answers_as_the_computation_does() -> None:
    splitter = Splitter()
    policy = _policy(("1", 70), ("2", 20), ("3", 10))
    expected = _assign(policy)
    assert {s: splitter.choose(policy, s) for s in SUBJECTS} == expected
    assert splitter.cached("digits") == len(SUBJECTS)
    assert {s: splitter.choose(policy, s) for s in SUBJECTS} == expected  # now from the cache


def test_the_cache_is_bounded() -> None:
    splitter = Splitter(max_entries=100)
    policy = _policy(("1", 50), ("2", 50))
    for subject in SUBJECTS[:1000]:
        assert splitter.choose(policy, subject) == choose(policy, subject)
        assert splitter.cached("digits") <= 100
    assert splitter.cached("digits") > 0


def test_a_changed_policy_empties_the_cache_and_an_equal_one_keeps_it() -> None:
    splitter = Splitter()
    old = _policy(("1", 90), ("2", 10))
    for subject in SUBJECTS[:300]:
        splitter.choose(old, subject)
    splitter.choose(_policy(("1", 90), ("2", 10)), SUBJECTS[0])
    assert splitter.cached("digits") == 300
    new = _policy(("1", 10), ("2", 90))
    answers = {s: splitter.choose(new, s) for s in SUBJECTS[:300]}
    assert answers == {s: choose(new, s) for s in SUBJECTS[:300]}
    assert Counter(answers.values())["2"] > 200


def test_caches_of_two_models_do_not_evict_each_other() -> None:
    splitter = Splitter()
    digits = _policy(("1", 50), ("2", 50))
    letters = TrafficPolicy(model="letters", weights=(("a", 50), ("b", 50)))
    for subject in SUBJECTS[:50]:
        assert splitter.choose(digits, subject) in {"1", "2"}
        assert splitter.choose(letters, subject) in {"a", "b"}
    assert splitter.cached("digits") == splitter.cached("letters") == 50


@pytest.mark.parametrize(
    ("sticky", "principal", "headers", "expected"),
    [
        ("key", Principal("key:alice"), None, "key:alice"),
        ("sub", Principal("jwt:user-42"), {}, "jwt:user-42"),
        ("key", ANONYMOUS, None, ""),
        ("sub", ANONYMOUS, None, ""),
        ("header:X-User-Id", Principal("key:alice"), {"x-user-id": "u7"}, "u7"),
        ("header:x-user-id", ANONYMOUS, {"x-user-id": "u7"}, "u7"),
        ("header:X-User-Id", Principal("key:alice"), {"x-other": "u7"}, ""),
        ("header:X-User-Id", Principal("key:alice"), None, ""),
    ],
)
def test_the_subject_follows_the_sticky_kind(
    sticky: str, principal: Principal, headers: dict[str, str] | None, expected: str
) -> None:
    policy = _policy(("1", 50), ("2", 50), sticky=sticky)
    assert subject_of(policy, principal, headers) == expected


def _request(version: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits", model_version=version, id="r1")
    request.parameters["priority"].int64_param = 3
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 64])
    request.inputs.add(name="INPUT1", datatype="INT64", shape=[2])
    request.outputs.add(name="OUTPUT0")
    request.raw_input_contents.append(bytes(range(256)) * 2)
    request.raw_input_contents.append(b"\x01" * 16)
    return request


@pytest.mark.parametrize("old", ["", "1", "a-very-long-version-name" * 3])
@pytest.mark.parametrize("new", ["2", "v2.0-ünïcode", "x" * 300])
def test_with_version_sets_the_version_and_leaves_the_rest(old: str, new: str) -> None:
    original = _request(old)
    data = original.SerializeToString()
    rewritten = with_version(data, new)
    assert rewritten.startswith(data)  # appended, not re-serialised
    parsed = pb.ModelInferRequest.FromString(rewritten)
    expected = pb.ModelInferRequest()
    expected.CopyFrom(original)
    expected.model_version = new
    assert parsed == expected
    assert parsed.raw_input_contents == original.raw_input_contents
    assert model_and_version(rewritten) == ("digits", new)


def test_with_version_on_a_request_with_typed_contents() -> None:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend(
        [1.0, 2.0, 3.0]
    )
    parsed = pb.ModelInferRequest.FromString(with_version(request.SerializeToString(), "3"))
    assert parsed.model_version == "3"
    assert list(parsed.inputs[0].contents.fp32_contents) == [1.0, 2.0, 3.0]
