"""Logs as one JSON object per line, for container log pipelines.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``,
plus the context a call passes with ``extra=`` (``destination``, ``stream``,
``topic``, ``partition``...) and ``exception`` with the traceback. As a last
line of defence (nothing in the worker logs them on purpose), every field is
redacted: secret values from the configuration become ``***`` in their plain,
``repr()``, JSON-escaped and percent-encoded forms, and so does the password
of any ``scheme://user:password@host`` URL, known or not.

The libraries' DEBUG lines that carry Kafka record values (table changelog
and dead-letter records hold profile attributes, identities and raw events),
request bodies or authentication bytes are never written, whatever
``runtime.log_level`` says: see ``VALUE_LOGGERS``.

Our own formatter rather than python-json-logger: it is short, and the
redaction has to see the final text, exception included.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import orjson
from pydantic import BaseModel, SecretStr

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

REDACTED = "***"

# The password of ``scheme://user:password@host``: up to the last "@" before the
# path, query or fragment (passwords often hold an unencoded "@"), and never
# across a blank, quote or angle bracket, which no URL holds unencoded. The
# scheme starts a word, so a long token is scanned once, not from every letter.
_URL_PASSWORD = re.compile(
    r"(?P<head>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@\"'<>]*:)[^\s/?#\"<>]+(?=@)"
)

# How a library may have rendered a string before it reaches a log line.
_ENCODINGS: tuple[Callable[[str], str], ...] = (
    lambda s: repr(s)[1:-1],  # repr() in its own choice of quotes
    lambda s: repr('"' + s)[2:-1],  # repr() of a text that holds both quotes: ' escaped
    lambda s: repr(s.encode())[2:-1],  # bytes, as aiokafka and botocore print them
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: quote(s),  # URL path
    lambda s: quote(s, safe=""),
    lambda s: quote_plus(s),  # form and query strings
    lambda s: quote_plus(s, safe="/"),
)
_PERCENT = re.compile(r"%[0-9A-F]{2}")


def _forms(secret: str) -> set[str]:
    """The secret and its encodings, two levels deep (a JSON body inside a repr())."""
    once = {secret} | {encode(secret) for encode in _ENCODINGS}
    forms = once | {encode(form) for form in once for encode in _ENCODINGS}
    # Percent-encoding is case-insensitive; some encoders write %2f.
    forms |= {_PERCENT.sub(lambda m: m.group().lower(), form) for form in forms}
    return {form for form in forms if form}


class Redactor:
    """Replaces known secrets, in every form above, and URL passwords by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = {form for secret in secrets if secret for form in _forms(secret)}
        # Longest first: the alternation takes the first that matches, so a secret
        # containing another is replaced whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._known = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        if "://" not in text:
            return text
        return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._redact = Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in entry.items():
            if isinstance(value, str):
                entry[key] = self._redact(value)
            elif not isinstance(value, bool) and self._redact(str(value)) != str(value):
                entry[key] = self._redact(str(value))  # a numeric secret passed in extra=
        return orjson.dumps(entry, default=str).decode()


# Loggers whose DEBUG lines carry message values, request bodies or credentials,
# in the pinned faust-streaming, aiokafka and botocore. They are held at INFO
# (or the configured level, if higher), and the handler drops their records
# below INFO should anything lower a level again.
VALUE_LOGGERS: dict[str, str] = {
    "aiokafka.conn": "every request and response: produced and fetched record batches, SASL bytes",
    "aiokafka.producer.producer": "'Sending (key=%s value=%s)' for every record produced",
    "faust.topics": "'send: ... k=%r v=%r' for every table, changelog and dead-letter record",
    "faust.transport.drivers.aiokafka": "the same 'send:' line in the producer driver",
    "faust.agents.agent": "'%r yielded: %r', an agent's output value",
    "botocore": "PutRecords parameters (the exported records), signed headers, response bodies",
    "aiobotocore": "the same for the asynchronous client",
}

# mode's ``log.dev`` lines log at INFO when the DEVLOG environment variable is set;
# these carry record values. (logger, text the message contains)
VALUE_MESSAGES: frozenset[tuple[str, str]] = frozenset(
    {("faust.transport.consumer", "DROPPED MESSAGE ROFF %r: k=%r v=%r")}
)


def _held(name: str) -> bool:
    return any(name == held or name.startswith(held + ".") for held in VALUE_LOGGERS)


class ValueRecordFilter(logging.Filter):
    """Drops the library records that carry values (see VALUE_LOGGERS, VALUE_MESSAGES)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO and _held(record.name):
            return False
        message = record.msg
        return not (
            isinstance(message, str)
            and any(record.name == name and text in message for name, text in VALUE_MESSAGES)
        )


def logging_config(
    level: str, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: JSON lines on ``stream`` (stdout) at ``level``."""
    number = logging.getLevelNamesMapping()[level.upper()]
    held = logging.getLevelName(max(number, logging.INFO))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "secrets": list(secrets)}},
        "filters": {"values": {"()": ValueRecordFilter}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["values"],
                "stream": stream or sys.stdout,
            }
        },
        "loggers": {name: {"level": held} for name in VALUE_LOGGERS},
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


def setup(level: str, secrets: Iterable[str] = (), stream: TextIO | None = None) -> dict[str, Any]:
    """Installs JSON logging; returns the config for mode's Worker, which applies it again."""
    config = logging_config(level, secrets, stream)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
    return config
