"""The one rule for the names and versions callers send: models, keys, aliases, version numbers.

Every place a name enters (URL, gRPC, CLI, admin API, registry, repository) checks it here, so a
name can never be a path (`..`, `/`), carry a control character, or make a metric label unbounded.
"""

from __future__ import annotations

import re

from common.errors import invalid_argument

#: Longest name accepted; long enough for any real model, short enough for a metric label.
MAX_NAME = 128
#: Largest version number accepted (fits SQLite's and protobuf's signed 64-bit integers).
MAX_VERSION = 2**63 - 1
#: A letter, digit or '_' first (so never '.' or '..'), then letters, digits, '_', '.', '-'.
NAME_PATTERN = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
_NAME = re.compile(NAME_PATTERN[1:-1])
_RULE = f"1-{MAX_NAME} characters of letters, digits, '_', '.' or '-', not starting with '.' or '-'"


def is_name(text: object) -> bool:
    """True when `text` follows the naming rule."""
    return isinstance(text, str) and _NAME.fullmatch(text) is not None


def is_whole(text: object) -> bool:
    """True for a whole number in ASCII digits (str.isdigit() alone takes "²", int() refuses it)."""
    return isinstance(text, str) and text.isascii() and text.isdigit()


def is_version(text: object) -> bool:
    """True for a version number: a whole number from 1 to MAX_VERSION."""
    return isinstance(text, str) and 0 < len(text) <= 19 and is_whole(text) \
        and 0 < int(text) <= MAX_VERSION


def shown(text: object, limit: int = 64) -> str:
    """A caller's text made safe to quote in a message or a log line: repr'd and cut to `limit`."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else quoted[:limit] + "...'"


def check_name(text: object, what: str = "model name") -> str:
    """`text` if it follows the naming rule, else INVALID_ARGUMENT naming the rule."""
    if not is_name(text):
        raise invalid_argument(f"{what} must be {_RULE}; got {shown(text)}")
    assert isinstance(text, str)
    return text


def check_version(text: object, what: str = "version") -> str:
    """`text` if it is a version number, else INVALID_ARGUMENT saying what a version is."""
    if not is_version(text):
        raise invalid_argument(f"{what} must be a whole number from 1 to {MAX_VERSION}; "
                               f"got {shown(text)}")
    assert isinstance(text, str)
    return text


def rule() -> str:
    """The naming rule in words, for help texts and error messages elsewhere."""
    return _RULE
