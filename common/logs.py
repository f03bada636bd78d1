"""Log output for both services: plain text, or one JSON object per line (`--log-format json`);
the level can change at run time."""

from __future__ import annotations

import logging
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    """A record as JSON: time, level, logger, message; a message that is JSON already (the
    request log's) is merged in rather than quoted."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z", "level": record.levelname,
                 "logger": record.name}
        message = record.getMessage()
        if message.startswith("{"):
            try:
                entry |= orjson.loads(message)
            except orjson.JSONDecodeError:
                entry["message"] = message
        else:
            entry["message"] = message
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str, form: str) -> None:
    """Set up the root logger once, on stderr, as `text` or `json`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # NOTE: no force: where handlers exist already (a test runner's), they stay.
    logging.basicConfig(level=level.upper(), handlers=[handler])


def level() -> int:
    """The level in force for every logger that does not set its own (the root's)."""
    return logging.getLogger().level


def set_level(value: int) -> None:
    """Change the level at run time (the logging extension); handlers keep their own as set."""
    logging.getLogger().setLevel(value)
