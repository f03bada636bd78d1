"""What the registry accepts: names, keys, weights, stickiness, shadows; RegistryError otherwise.

Each check's message says what was wrong and what fits; names follow `common.names`.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Mapping, Sequence

from common.names import MAX_VERSION, is_name, is_version, rule, shown
from common.policy import ROLES

_HEADER = re.compile(r"^[A-Za-z0-9_.-]+$")


class RegistryError(ValueError):
    """A registry request that cannot be done; the message says what was wrong and what fits."""


def check_count(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RegistryError(f"{what} must be an integer >= 0 (0: no limit), got {value!r}")
    return value


def check_key(name: str, role: str, models: Sequence[str] | str, rate: float) -> tuple[str, ...]:
    if not is_name(name):
        raise RegistryError(f"key name must be {rule()}; got {shown(name)}")
    if role not in ROLES:
        raise RegistryError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    globs = (models,) if isinstance(models, str) else tuple(models)
    if not globs or not all(isinstance(glob, str) and glob.strip() for glob in globs):
        raise RegistryError(f"models must be one or more non-empty globs, got {list(globs)!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (
            math.isfinite(rate) and rate >= 0):
        raise RegistryError(f"rate must be a number of requests per second >= 0, got {rate!r}")
    return globs


def check_model(model: str) -> None:
    # NOTE: the rule has no ':', which separates model and version (audit targets, the CLI).
    if not is_name(model):
        raise RegistryError(f"model name must be {rule()}; got {shown(model)}")


def check_version(model: str, version: object) -> str:
    if not is_version(version):
        raise RegistryError(f"version of model {model!r} must be a whole number from 1 to "
                            f"{MAX_VERSION}, got {shown(version)}")
    assert isinstance(version, str)
    return version


def check_weights(model: str, weights: Mapping[str, int] | Sequence[tuple[str, int]]
                   ) -> tuple[tuple[str, int], ...]:
    pairs = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
    if not pairs:
        raise RegistryError(f"traffic for model {model!r} needs at least one version=weight")
    seen: set[str] = set()
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise RegistryError(f"weights of model {model!r} must be (version, weight) pairs, "
                                f"got {pair!r}")
        version, weight = pair
        check_version(model, version)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
            raise RegistryError(f"weight of version {version!r} of model {model!r} must be an "
                                f"integer > 0, got {weight!r}")
        if version in seen:
            raise RegistryError(f"version {version!r} of model {model!r} appears twice in the "
                                "weights; give each version once")
        seen.add(version)
    return tuple((version, weight) for version, weight in pairs)


def check_sticky(sticky: str) -> str:
    """The canonical form: header names lowercased, as HTTP/2 and gRPC metadata carry them."""
    if sticky in ("key", "sub"):
        return sticky
    if isinstance(sticky, str) and sticky.startswith("header:"):
        header = sticky[len("header:"):]
        if _HEADER.match(header):
            return f"header:{header.lower()}"
    raise RegistryError(f"sticky must be 'key', 'sub' or 'header:<name>' (a header name of "
                        f"letters, digits, '_', '.' or '-'), got {sticky!r}")


def check_shadow(model: str, shadow: tuple[str, float] | None) -> tuple[str | None, float]:
    if shadow is None:
        return None, 0.0
    if not isinstance(shadow, (tuple, list)) or len(shadow) != 2:
        raise RegistryError(f"shadow for model {model!r} must be (version, percent), "
                            f"got {shadow!r}")
    version, percent = shadow
    check_version(model, version)
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not (
            0 < percent <= 100):
        raise RegistryError(f"shadow percent for model {model!r} must be in (0, 100], "
                            f"got {percent!r}")
    return version, float(percent)


def check_ready(conn: sqlite3.Connection, model: str, versions: Sequence[str]) -> None:
    """A policy of a model the registry tracks may name only its ready versions.

    A model without registered versions is served from the repository as it stands, unchecked.
    """
    states = dict(conn.execute("SELECT version, state FROM versions WHERE model = ?", (model,))
                  .fetchall())
    if not states:
        return
    missing = sorted(v for v in set(versions) if states.get(v) != "ready")
    if missing:
        ready = sorted((v for v, state in states.items() if state == "ready"),
                       key=lambda v: (len(v), v))
        raise RegistryError(f"model {model!r} has no ready version {', '.join(missing)}; its "
                            f"ready versions: {', '.join(ready) or 'none'}")
