"""The JSON log format (worker/logs.py): one object per line, secrets redacted.

The redaction in every rendering and the library loggers are in test_logs.py.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from worker.logs import JsonFormatter, secret_values
from worker.settings import Settings


def _log_lines(secrets: Sequence[str], emit: Any) -> list[dict[str, Any]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(secrets))
    logger = logging.getLogger(f"test-{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    emit(logger)
    text = stream.getvalue()
    return [orjson.loads(line) for line in text.splitlines()]


def test_each_log_record_is_one_json_object_per_line_with_context() -> None:
    def emit(logger: logging.Logger) -> None:
        logger.warning("stream %s\nrefuses", "s1", extra={"destination": "d", "partition": 3})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")

    first, second = _log_lines([], emit)
    assert first["level"] == "warning"
    assert first["message"] == "stream s1\nrefuses"
    assert first["destination"] == "d"
    assert first["partition"] == 3
    assert first["time"].endswith("+00:00")
    assert second["level"] == "error"
    assert "ValueError: boom" in second["exception"]


def test_secrets_are_redacted_everywhere_in_a_line() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG"

    def emit(logger: logging.Logger) -> None:
        logger.info("key %s", secret, extra={"detail": f"x{secret}x"})
        try:
            raise RuntimeError(secret)
        except RuntimeError:
            logger.exception("oops")

    lines = _log_lines([secret, ""], emit)
    assert secret not in orjson.dumps(lines).decode()
    assert lines[0]["message"] == "key ***"
    assert lines[0]["detail"] == "x***x"


def test_secret_values_finds_every_secret_in_the_settings() -> None:
    settings = Settings.model_validate(
        {
            "destinations": [
                {
                    "name": "d",
                    "stream": "s",
                    "region": "us-east-1",
                    "segments": [{"id": "x"}],
                    "auth": {
                        "access_key_id": "AKIA1",
                        "secret_access_key": "secret-one",
                        "session_token": "token-one",
                    },
                }
            ]
        }
    )
    found = secret_values(settings)
    assert Counter(found) >= Counter(["secret-one", "token-one"])
