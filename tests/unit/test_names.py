"""The one naming rule: what it takes and what it refuses, with the messages a caller reads."""

import grpc
import pytest

from common.errors import TensorgateError
from common.names import MAX_NAME, check_name, check_version, is_name, is_version, is_whole


@pytest.mark.parametrize("name", ["digits", "resnet50", "a", "_x", "m.v2", "my-model_3",
                                  "a" * MAX_NAME])
def test_names_that_follow_the_rule(name: str) -> None:
    assert is_name(name)
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "/tmp", "a/b", "a\\b", "-x", ".hidden",
                                  "a\x00b", "digits\n", "a b", "é", "a" * (MAX_NAME + 1), None, 7])
def test_names_that_break_it_are_refused_with_the_rule(name: object) -> None:
    assert not is_name(name)
    with pytest.raises(TensorgateError) as caught:
        check_name(name, "model name")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    message = caught.value.message
    assert "model name must be" in message and "letters, digits" in message


def test_a_long_name_is_cut_in_the_message() -> None:
    with pytest.raises(TensorgateError) as caught:
        check_name("x" * 30_000)
    assert len(caught.value.message) < 300


@pytest.mark.parametrize("version", ["1", "2", "42", str(2**63 - 1)])
def test_versions(version: str) -> None:
    assert is_version(version) and check_version(version) == version


@pytest.mark.parametrize("version", ["", "0", "-1", "+1", "1.0", "²", "\u0661", str(2**63),
                                     "1" * 40, " 1", None])
def test_versions_refused(version: object) -> None:
    assert not is_version(version)
    with pytest.raises(TensorgateError, match="whole number from 1"):
        check_version(version)


@pytest.mark.parametrize(("text", "whole"), [("0", True), ("007", True), ("123", True), ("", False),
                                             ("²", False), ("\u0661", False), ("-1", False),
                                             ("1 ", False), (None, False), (3, False)])
def test_whole_numbers_are_ascii_digits_int_reads(text: object, whole: bool) -> None:
    assert is_whole(text) is whole
    if whole:
        assert int(str(text)) >= 0
