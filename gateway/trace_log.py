"""The trace and logging extensions' settings: Triton's names, mapped onto OpenTelemetry sampling
(globally and per model) and the log level; one core for HTTP and gRPC. trace_share.py keeps
them the same in every gateway process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import grpc

from common import logs, tracing
from common.errors import TensorgateError, invalid_argument
from common.names import check_name, is_whole, shown

TRACE_KEYS = ("trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file",
              "trace_mode")
LOG_KEYS = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")
#: Models with settings of their own, at most: the table never grows with callers' text.
MAX_MODELS = 256
#: Largest trace_rate and trace_count accepted.
MAX_COUNT = 2**31 - 1
#: The defaults keep what `--trace-exporter` did before the extension: every request traced.
DEFAULTS: dict[str, Any] = {"trace_level": "TIMESTAMPS", "trace_rate": 1, "trace_count": -1}


@dataclass
class _Count:
    """Traces still to take; -1: no bound. Shared by every model that takes the global count."""

    left: int


@dataclass
class _Rule:
    """What decides one model's (or the global) sampling; rebuilt on every change."""

    on: bool
    rate: int
    count: _Count
    seen: int = 0


@dataclass
class TraceSettings:
    """The global trace settings and the ones some models override, with their sampling rules."""

    own: dict[str, dict[str, Any]] = field(default_factory=dict)  # model → the keys it sets
    glob: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))
    rules: dict[str, _Rule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.default = _Rule(self.glob["trace_level"] == "TIMESTAMPS", self.glob["trace_rate"],
                             _Count(self.glob["trace_count"]))

    def sample(self, model: str) -> bool:
        """Whether to trace this request: level on, 1 in `trace_rate`, while `trace_count` lasts.

        Called on the infer path only while tracing is on: two lookups and a counter.
        """
        rule = self.rules.get(model, self.default)
        if not rule.on:
            return False
        rule.seen += 1
        if (rule.seen - 1) % rule.rate or rule.count.left == 0:
            return False
        if rule.count.left > 0:
            rule.count.left -= 1
        return True

    def shown(self, model: str | None = None) -> dict[str, Any]:
        """The settings in force, as Triton answers them: a list for the level, strings else."""
        rule = self.default if model is None else self.rules.get(model, self.default)
        return {"trace_level": ["TIMESTAMPS" if rule.on else "OFF"],
                "trace_rate": str(rule.rate), "trace_count": str(rule.count.left),
                "log_frequency": "0", "trace_file": "", "trace_mode": "opentelemetry"}

    def update(self, changes: dict[str, Any], model: str | None = None) -> dict[str, Any]:
        """Change some settings (None clears: a model's back to the global, the global's back to
        the default) and answer the settings in force. Refuses what it cannot do, by name."""
        checked = {key: _trace_value(key, value) for key, value in changes.items()}
        if model is None:
            for key, value in checked.items():
                if key in DEFAULTS:
                    self.glob[key] = DEFAULTS[key] if value is None else value
            if "trace_count" in checked:
                self.default.count = _Count(self.glob["trace_count"])
            self.default.on = self.glob["trace_level"] == "TIMESTAMPS"
            if self.default.rate != self.glob["trace_rate"]:  # a new rate starts a new round
                self.default.rate, self.default.seen = self.glob["trace_rate"], 0
        else:
            own = self.own.get(model)
            if own is None and len(self.own) >= MAX_MODELS:
                raise TensorgateError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"trace settings exist for {MAX_MODELS} models already: "
                                      "clear one (set its values to null) first")
            own = dict(own or {})
            for key, value in checked.items():
                if key in DEFAULTS and value is None:
                    own.pop(key, None)
                elif key in DEFAULTS:
                    own[key] = value
            self.own[model] = own
            if not own:
                del self.own[model]
        self._rebuild(model, "trace_count" in checked)
        return self.shown(model)

    def state(self) -> dict[str, Any]:
        """What the registry keeps: the global settings and each model's own, as JSON values."""
        return {"global": dict(self.glob), "models": {m: dict(own) for m, own in self.own.items()}}

    def adopt(self, state: dict[str, Any]) -> None:
        """Take `state` (another gateway's change, from the registry): only the settings that
        differ change, so counts go on where nothing changed."""
        glob = state.get("global", {})
        changes = {key: glob.get(key) for key in DEFAULTS
                   if glob.get(key, DEFAULTS[key]) != self.glob[key]}
        if changes:
            self.update(changes)
        models = state.get("models", {})
        for model in {*self.own, *models}:
            want, have = models.get(model, {}), self.own.get(model, {})
            changes = {key: want.get(key) for key in DEFAULTS if want.get(key) != have.get(key)}
            if changes:
                self.update(changes, check_name(model))

    def _rebuild(self, changed: str | None, recount: bool) -> None:
        """Every model's rule again from its own keys over the global ones; a count restarts only
        where it was set now."""
        rules: dict[str, _Rule] = {}
        for model, own in self.own.items():
            before = self.rules.get(model)
            if "trace_count" not in own:
                count = self.default.count
            elif before is None or (model == changed and recount) \
                    or before.count is self.default.count:
                count = _Count(own["trace_count"])
            else:
                count = before.count
            level = own.get("trace_level", self.glob["trace_level"])
            rate = own.get("trace_rate", self.glob["trace_rate"])
            seen = before.seen if before is not None and before.rate == rate else 0
            rules[model] = _Rule(level == "TIMESTAMPS", rate, count, seen)
        self.rules = rules


def _trace_value(key: str, value: Any) -> Any:
    """The checked value of one trace setting (None: clear it), or INVALID_ARGUMENT naming it."""
    if key not in TRACE_KEYS:
        raise invalid_argument(f"unknown trace setting {shown(key)}: expected some of "
                               f"{', '.join(TRACE_KEYS)}")
    if value is None:
        return None
    if key == "trace_level":
        return _level(value)
    value = _single(key, value)
    if key == "trace_rate":
        return _whole(key, value, 1)
    if key == "trace_count":
        return _whole(key, value, -1)
    if key == "trace_file" and value != "":
        raise invalid_argument("trace_file is not supported: the server never writes where a "
                               "caller says; spans go to the exporter set with --trace-exporter")
    if key == "log_frequency" and str(value) != "0":
        raise invalid_argument("log_frequency is not supported (there is no trace file): "
                               f"expected '0', got {shown(value)}")
    if key == "trace_mode" and value != "opentelemetry":
        raise invalid_argument(f"trace_mode {shown(value)} is not supported: expected "
                               "'opentelemetry'")
    return None if key in ("trace_file", "log_frequency", "trace_mode") else value


def _level(value: Any) -> str:
    levels = value if isinstance(value, list) else [value]
    if "TENSORS" in levels:
        raise invalid_argument("trace_level TENSORS is not supported: tensors are never "
                               "recorded; expected ['OFF'] or ['TIMESTAMPS']")
    if len(levels) != 1 or levels[0] not in ("OFF", "TIMESTAMPS"):
        raise invalid_argument(f"trace_level must be ['OFF'] or ['TIMESTAMPS']; got "
                               f"{shown(value)}")
    level: str = levels[0]
    return level


def _single(key: str, value: Any) -> Any:
    if isinstance(value, list):
        if len(value) != 1:
            raise invalid_argument(f"{key} takes one value; got {shown(value)}")
        return value[0]
    return value


def _whole(key: str, value: Any, least: int) -> int:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    body = text[1:] if isinstance(text, str) and text.startswith("-") else text
    if not isinstance(text, str) or not is_whole(body) or len(body) > 10 \
            or not least <= int(text) <= MAX_COUNT:
        raise invalid_argument(f"{key} must be a whole number from {least} to {MAX_COUNT} "
                               f"(as a string); got {shown(value)}")
    return int(text)


#: This process's trace settings; the gateway's request spans are sampled by them.
TRACE = TraceSettings()
tracing.set_sampling(TRACE.sample)


def log_settings() -> dict[str, Any]:
    """The logging settings in force, from the log level, as Triton answers them."""
    level = logs.level()
    return {"log_file": "", "log_info": level <= logging.INFO,
            "log_warning": level <= logging.WARNING, "log_error": level <= logging.ERROR,
            "log_verbose_level": int(level <= logging.DEBUG), "log_format": "default"}


def update_log(changes: dict[str, Any]) -> dict[str, Any]:
    """Change the log level as Triton's flags say, and answer the settings in force.

    Our level is a threshold, so the flags must be one too: errors on if warnings are, warnings
    on if info is, info on if verbose is. Anything else is refused, by name.
    """
    settings = log_settings()
    for key, value in changes.items():
        settings[key] = _log_value(key, value)
    verbose, info = settings["log_verbose_level"], settings["log_info"]
    warning, error = settings["log_warning"], settings["log_error"]
    if (verbose and not info) or (info and not warning) or (warning and not error):
        raise invalid_argument("log settings must be a threshold: log_error on if log_warning "
                               "is, log_warning on if log_info is, log_info on if "
                               f"log_verbose_level is; got {shown(changes, 160)}")
    level = (logging.DEBUG if verbose else logging.INFO if info else logging.WARNING if warning
             else logging.ERROR if error else logging.CRITICAL)
    logs.set_level(level)
    return log_settings()


def _log_value(key: str, value: Any) -> Any:
    if key not in LOG_KEYS:
        raise invalid_argument(f"unknown log setting {shown(key)}: expected some of "
                               f"{', '.join(LOG_KEYS)}")
    if key == "log_file":
        if value != "":
            raise invalid_argument("log_file is not supported: the server never writes where a "
                                   "caller says; logs go to stderr")
    elif key == "log_format":
        if value != "default":
            raise invalid_argument(f"log_format {shown(value)} is not supported: expected "
                                   "'default' (the line format is chosen at start, --log-format)")
    elif key == "log_verbose_level":
        if isinstance(value, bool) or value not in (0, 1):
            raise invalid_argument("log_verbose_level must be 0 (off) or 1 (debug): tensorgate "
                                   f"has one verbose level; got {shown(value)}")
    elif not isinstance(value, bool):
        raise invalid_argument(f"{key} must be true or false; got {shown(value)}")
    return value
