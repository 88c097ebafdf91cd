"""Logs as one JSON object per line, for container log pipelines.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``,
plus the context a call passes with ``extra=`` (``destination``, ``stream``,
``topic``, ``partition``...) and ``exception`` with the traceback. Secret
values from the configuration are replaced by ``***`` wherever they appear,
as a last line of defence: nothing in the worker logs them on purpose.

Our own formatter rather than python-json-logger: it is twenty lines, and the
redaction has to see the final text, exception included.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, SecretStr

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self._redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = self._redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = self._redact(self.formatStack(record.stack_info))
        for key, value in entry.items():
            if isinstance(value, str) and key not in ("message", "exception", "stack"):
                entry[key] = self._redact(value)
        return orjson.dumps(entry, default=str).decode()


def logging_config(level: str, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: JSON lines on stdout at ``level``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "secrets": list(secrets)}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": sys.stdout}
        },
        "root": {"level": level.upper(), "handlers": ["stdout"]},
    }


def secret_values(model: Any) -> list[str]:
    """Every SecretStr value in a pydantic model, nested models and lists included."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(model)
    return found


def setup(level: str, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Installs JSON logging; returns the config for mode's Worker, which applies it again."""
    config = logging_config(level, secrets)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
    return config
