"""worker.logs: redaction of secrets in every form, value-carrying library logs, `check`'s logs."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest

from worker import logs
from worker.logs import VALUE_LOGGERS, VALUE_MESSAGES, JsonFormatter

REPO = Path(__file__).resolve().parents[2]
# Quotes, a backslash, a slash, a blank, "@", "%", "+" and a non-ASCII letter: each
# is escaped or encoded differently by repr(), JSON and percent-encoding. It starts
# and ends with letters no encoding changes, so a leftover piece is easy to see.
SECRET = "Zq'9\"x\\K/ä @7%+&=Yw"


def format_record(secrets: list[str], message: str, *args: Any, **extra: Any) -> dict[str, Any]:
    record = logging.makeLogRecord(
        {"name": "test", "levelno": logging.INFO, "levelname": "INFO", "msg": message}
    )
    record.args = args
    record.__dict__.update(extra)
    line = JsonFormatter(secrets).format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = orjson.loads(line)
    parsed["_line"] = line
    return parsed


RENDERINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda s: s,
    "repr": repr,
    "repr in a dict": lambda s: repr({"password": s}),
    "repr with both quotes": lambda s: repr(f"'\"{s}"),
    "bytes repr (SASL PLAIN)": lambda s: repr(b"\x00worker\x00" + s.encode()),
    "json": lambda s: json.dumps({"password": s}),
    "json, unicode": lambda s: json.dumps({"password": s}, ensure_ascii=False),
    "quote": quote,
    "quote, nothing safe": lambda s: quote(s, safe=""),
    "quote_plus": quote_plus,
    "lower-case percent-encoding": lambda s: re.sub(
        r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(s, safe="")
    ),
    "json inside a repr": lambda s: repr(json.dumps({"password": s})),
    "quoted inside json": lambda s: json.dumps({"url": "x?p=" + quote_plus(s)}),
}


@pytest.mark.parametrize("render", RENDERINGS.values(), ids=RENDERINGS.keys())
def test_a_known_secret_is_redacted_in_every_rendering(render: Callable[[str], str]) -> None:
    rendered = render(SECRET)
    entry = format_record([SECRET], "login with %s failed", rendered, detail=f"<{rendered}>")
    for field in ("message", "detail"):
        assert "***" in entry[field]
        assert "Zq" not in entry[field], entry[field]
        assert "Yw" not in entry[field], entry[field]
    assert SECRET not in entry["_line"]
    assert rendered not in entry["_line"]


def test_a_secret_inside_another_text_keeps_the_text_around_it() -> None:
    entry = format_record([SECRET], "cfg %r", {"user": "worker", "password": SECRET})
    assert entry["message"] == "cfg {'user': 'worker', 'password': '***'}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("to postgres://admin:hunter2@db:5432/x", "to postgres://admin:***@db:5432/x"),
        ("https://u:p%40ss@h/a", "https://u:***@h/a"),
        ("sasl://u:p@ss@broker:9094", "sasl://u:***@broker:9094"),  # an unencoded "@"
        ("redis://:only-a-password@cache", "redis://:***@cache"),
        ("'http://u:a@h', 'x@y'", "'http://u:***@h', 'x@y'"),
        ("a=http://u:1@h b=ftp://v:2@k", "a=http://u:***@h b=ftp://v:***@k"),
        # No password: nothing to hide.
        ("http://host:8080/path@x", "http://host:8080/path@x"),
        ("http://host:8080?to=a@b", "http://host:8080?to=a@b"),
        ("https://user@host/", "https://user@host/"),
        ("bootstrap a:9092,b:9092 user@example", "bootstrap a:9092,b:9092 user@example"),
    ],
)
def test_url_passwords_are_redacted_even_when_unknown(text: str, expected: str) -> None:
    assert format_record([], "%s", text)["message"] == expected


def test_exception_and_stack_fields_are_redacted_the_same_way() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter([SECRET]))
    logger = logging.getLogger("test_logs.exceptions")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        try:
            raise ValueError(f"bad login {SECRET!r} at https://u:unknown-pw@h/")
        except ValueError as cause:
            raise RuntimeError(json.dumps({"password": SECRET})) from cause
    except RuntimeError:
        logger.exception("failed", stack_info=True)
    finally:
        logger.removeHandler(handler)
    (entry,) = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert "ValueError: bad login '***' at https://u:***@h/" in entry["exception"]
    assert 'RuntimeError: {"password": "***"}' in entry["exception"]
    assert "stack" in entry
    line = stream.getvalue()
    assert "unknown-pw" not in line
    assert "Zq" not in line

    # A record whose traceback another formatter already rendered (exc_text).
    record = logging.makeLogRecord({"msg": "x", "exc_text": f"Error: {quote_plus(SECRET)}"})
    assert orjson.loads(JsonFormatter([SECRET]).format(record))["exception"] == "Error: ***"


def test_a_numeric_secret_passed_as_context_is_redacted() -> None:
    entry = format_record(["918273"], "pin set", pin=918273, count=3)
    assert entry["pin"] == "***"
    assert entry["count"] == 3


# -- logging set-up: value-carrying library loggers -------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.setup configures the process' logging: undo it after the test."""
    root = logging.getLogger()
    level = root.level
    held = {name: logging.getLogger(name).level for name in VALUE_LOGGERS}
    yield
    for handler in root.handlers[:]:
        if isinstance(handler.formatter, JsonFormatter):
            root.removeHandler(handler)
    root.setLevel(level)
    for name, old in held.items():
        logging.getLogger(name).setLevel(old)
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def library_loggers() -> dict[str, logging.Logger]:
    """The logger objects the libraries' value-carrying lines use, from their modules."""
    import aiokafka.conn
    import aiokafka.producer.producer
    import botocore.endpoint
    import botocore.parsers
    import faust.agents.agent
    import faust.topics
    import faust.transport.drivers.aiokafka

    return {
        "aiokafka.conn": aiokafka.conn.log,
        "aiokafka.producer.producer": aiokafka.producer.producer.log,
        "faust.topics": faust.topics.logger,
        "faust.transport.drivers.aiokafka": faust.transport.drivers.aiokafka.logger,
        "faust.agents.agent": faust.agents.agent.Agent.logger,
        "botocore.endpoint": botocore.endpoint.logger,
        "botocore.parsers": botocore.parsers.LOG,
    }


@pytest.mark.usefixtures("restore_logging")
def test_at_debug_level_no_library_logs_a_value() -> None:
    stream = io.StringIO()
    logs.setup("debug", [], stream)
    value = b'{"profileId":"p-1","personalEmail":{"address":"jane@example.com"}}'
    loggers = library_loggers()
    for name, logger in loggers.items():
        assert not logger.isEnabledFor(logging.DEBUG), name
    # The libraries' own lines, through their own loggers.
    loggers["aiokafka.producer.producer"].debug(
        "Sending (key=%s value=%s) to %s", b"p-1", value, "dlq-0"
    )
    loggers["faust.topics"].debug(
        "send: topic=%r k=%r v=%r timestamp=%r partition=%r", "dlq", b"p-1", value, None, None
    )
    loggers["faust.transport.drivers.aiokafka"].debug(
        "send: topic=%r k=%r v=%r timestamp=%r partition=%r", "changelog", b"p-1", value, 0, 0
    )
    loggers["aiokafka.conn"].debug("Request to %s:%d %d: %s", "kafka", 9092, 7, value)
    loggers["botocore.endpoint"].debug("Making request for %s with params: %s", "PutRecords", value)
    # Even if something lowers a held logger's level again, the handler drops the line.
    loggers["aiokafka.conn"].setLevel(logging.DEBUG)
    loggers["aiokafka.conn"].debug("Response from %s:%d %d: %s", "kafka", 9092, 7, value)
    # mode's log.dev lines are INFO when DEVLOG is set.
    logging.getLogger("faust.transport.consumer").info(
        "[^--Consumer]: DROPPED MESSAGE ROFF %r: k=%r v=%r", 4, b"p-1", value
    )
    assert "jane@example.com" not in stream.getvalue()
    assert lines(stream) == []

    # Debug stays on for everything else, and INFO and above for the held loggers.
    logging.getLogger("faust.tables.recovery").debug("seen offset for tp is 3")
    logging.getLogger("worker.test").debug("worker detail")
    loggers["aiokafka.producer.producer"].info("producer info")
    logging.getLogger("faust.transport.consumer").info("[^--Consumer]: Seek stream partitions")
    assert [e["message"] for e in lines(stream)] == [
        "seen offset for tp is 3",
        "worker detail",
        "producer info",
        "[^--Consumer]: Seek stream partitions",
    ]


@pytest.mark.usefixtures("restore_logging")
def test_a_level_above_info_also_holds_the_library_loggers() -> None:
    logs.setup("warning", [], io.StringIO())
    for name in VALUE_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name


# Debug (or mode's dev) calls whose arguments name one of these may log a value.
VALUE_NAMES = {"key", "value", "message", "request", "request_struct", "response"}
# Read in the pinned versions: these only ever log offsets, partitions, group metadata.
REVIEWED_SAFE = {
    "faust.streams": "a Message's repr is its partition and offset",
    "faust.stores.aerospike": "not a store the worker offers",
    "aiokafka.consumer.group_coordinator": "JoinGroup/SyncGroup: members and assignments",
}


def test_every_library_debug_line_that_names_a_value_is_held() -> None:
    """A tripwire for library upgrades: new value-carrying debug lines must be reviewed."""
    import aiokafka
    import faust
    import mode

    unheld = []
    for package in (faust, mode, aiokafka):
        root = Path(package.__file__ or "").parent
        for path in sorted(root.rglob("*.py")):
            module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("debug", "dev")
                    and node.args
                ):
                    continue
                named = {
                    n.id if isinstance(n, ast.Name) else n.attr
                    for arg in node.args
                    for n in ast.walk(arg)
                    if isinstance(n, ast.Name | ast.Attribute)
                }
                if not named & VALUE_NAMES or module in REVIEWED_SAFE:
                    continue
                template = node.args[0]
                if node.func.attr == "dev":  # INFO under DEVLOG: held by message, not level
                    text = template.value if isinstance(template, ast.Constant) else None
                    if (module, text) in VALUE_MESSAGES:
                        continue
                elif logs._held(module):
                    continue
                unheld.append(f"{module}:{node.lineno}: {ast.unparse(node)[:100]}")
    assert not unheld, "debug lines that may log values, not held by worker.logs:\n" + "\n".join(
        unheld
    )


# -- python -m worker check ------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_config(tmp_path: Path, bootstrap: str, endpoint: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
kafka:
  bootstrap_servers: {bootstrap}
  security_protocol: SASL_PLAINTEXT
  sasl_mechanism: PLAIN
  sasl_username: worker
destinations:
  - name: d
    stream: s
    region: us-east-1
    endpoint_url: {endpoint}
    segments: [{{id: x}}]
""",
        encoding="utf-8",
    )
    return path


def test_check_writes_library_log_lines_as_redacted_json(tmp_path: Path) -> None:
    """The real command against a closed port: aiokafka's "Unable connect" line."""
    config = write_config(
        tmp_path, f"127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    env["KD_KAFKA__SASL_PASSWORD"] = SECRET
    result = subprocess.run(
        [sys.executable, "-m", "worker", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == ["ok  configuration: 1 destination(s)"]
    logged = []
    for line in result.stderr.splitlines():
        if line.startswith("FAIL "):
            continue
        logged.append(json.loads(line))  # anything else is a JSON log line
    assert any(
        e["logger"].startswith("aiokafka") and "Unable connect" in e["message"] for e in logged
    )
    assert SECRET not in result.stderr


@pytest.mark.usefixtures("restore_logging")
def test_check_logs_through_the_redacting_formatter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import worker.check
    from worker.__main__ import main

    async def fake_check(settings: Any) -> int:
        logging.getLogger("aiokafka").error(
            "Unable connect to %r (%s)", f"sasl://worker:{SECRET}@kafka:9094", repr(SECRET)
        )
        logging.getLogger("aiokafka.conn").debug("Request to kafka:9094 1: %r", SECRET.encode())
        print("FAIL kafka: cannot reach", file=sys.stderr)
        return 1

    monkeypatch.setattr(worker.check, "check", fake_check)
    monkeypatch.setenv("KD_KAFKA__SASL_PASSWORD", SECRET)
    monkeypatch.setenv("KD_RUNTIME__LOG_LEVEL", "debug")
    config = write_config(tmp_path, "kafka:9094", "http://kinesis:4567")
    assert main(["check", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert [line for line in err.splitlines() if line.startswith("FAIL")] == [
        "FAIL kafka: cannot reach"
    ]
    logged = [json.loads(line) for line in err.splitlines() if not line.startswith("FAIL")]
    assert [e["message"] for e in logged if e["logger"] == "aiokafka"] == [
        "Unable connect to 'sasl://worker:***@kafka:9094' ('***')"
    ]
    assert not [e for e in logged if e["logger"] == "aiokafka.conn"]
    assert "Zq" not in err


async def test_check_redacts_its_failure_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FAIL line quotes the exception, which can quote a secret."""
    import worker.check
    from worker.kinesis import TransportError
    from worker.settings import ConfigError, load_settings

    async def refused(settings: Any) -> Any:
        raise ConfigError(f"kafka: login refused for sasl://worker:{SECRET}@kafka:9094")

    class Transport:
        def __init__(self, destination: Any) -> None:
            pass

        async def describe_stream(self, stream: str) -> Any:
            raise TransportError("AccessDenied", f"denied with {SECRET!r}", fatal=True)

        async def close(self) -> None:
            pass

    monkeypatch.setattr(worker.check, "preflight", refused)
    monkeypatch.setattr(worker.check, "AioBotoTransport", Transport)
    monkeypatch.setenv("KD_KAFKA__SASL_PASSWORD", SECRET)
    settings = load_settings(write_config(tmp_path, "kafka:9094", "http://kinesis:4567"))
    assert await worker.check.check(settings) == 1
    err = capsys.readouterr().err
    assert err.count("FAIL") == 2
    assert SECRET not in err
    assert repr(SECRET) not in err
    assert "***" in err
