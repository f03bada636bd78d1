"""Shared-memory regions (Triton's extension): the parameter names, the shm key rule, and how the
gateway scopes a caller's region names by owner before a runtime worker sees them."""

from __future__ import annotations

import hashlib
import re

from common.errors import invalid_argument
from common.names import check_name, shown

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
#: Present in the bytes of every request that names a region: a cheap test before a parse.
MARK = REGION.encode()
#: A POSIX shm name: '/' then a letter, digit or '_' (never '.' or '..'), then safe characters.
_KEY = re.compile(r"/[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
#: Objects under this prefix are tensorgate's own (its arenas): no caller may map them.
OWN_PREFIX = "/tensorgate"
#: An owner id: the first 16 hex digits of the SHA-256 of the caller's subject.
_OWNER = re.compile(r"[0-9a-f]{16}")


def owner_of(subject: str) -> str:
    """The owner id of an authenticated subject: never the caller's own text."""
    return hashlib.sha256(subject.encode()).hexdigest()[:16]


def scoped(owner: str, name: str) -> str:
    """The name a runtime worker keeps: `<owner>/<name>`, the name checked."""
    return f"{owner}/{check_name(name, 'shared memory region name')}"


def unscoped(name: str) -> str:
    """The caller's own name of a scoped one (a name without a scope is returned as it is)."""
    return name.split("/", 1)[1] if "/" in name else name


def check_region(name: str) -> str:
    """A region name as a runtime keeps it: `name`, or `<owner>/<name>` from a gateway; an
    empty name, or `<owner>/`, selects every region (of that owner) in status and unregister."""
    owner, _, rest = name.rpartition("/")
    if owner and not _OWNER.fullmatch(owner):
        raise invalid_argument(f"shared memory region name {shown(name)}: expected a name of "
                               "letters, digits, '_', '.' or '-'")
    if rest:
        check_name(rest, "shared memory region name")
    return name


def check_key(key: str) -> str:
    """`key` if it names a POSIX shared-memory object a caller may register, else
    INVALID_ARGUMENT naming the rule."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise invalid_argument(f"shared memory key must be a POSIX shm name: '/' then 1-200 "
                               f"letters, digits, '_', '.' or '-' (not starting with '.' or "
                               f"'-'); got {shown(key)}")
    if key.startswith(OWN_PREFIX):
        raise invalid_argument(f"shared memory key {shown(key)}: names starting with "
                               f"'{OWN_PREFIX}' are the server's own; choose another")
    return key
