"""The worker on secured Kafka listeners: SASL (PLAIN, SCRAM), SASL over TLS, mutual TLS.

The local stack's broker has, besides PLAINTEXT, a SASL_PLAINTEXT, a SASL_SSL
and an SSL listener (client certificates required) with test-only users and
certificates (deploy/local/stack.sh). The worker connects through a secured
listener only; the test produces and inspects through PLAINTEXT, which is the
same broker and the same topics.

A stack started by an older stack.sh has no secured listeners: these tests then
fail, saying to restart it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka.admin import NewTopic

from tests.support import (
    REPO,
    Stack,
    StreamReader,
    WorkerProcess,
    admin_call,
    free_port,
    produce,
    profile_update,
    qualification,
    run_sync,
)

# The local stack's TEST-ONLY SASL user (deploy/local/stack.sh); it exists nowhere else.
SASL_USER = "worker"
SASL_PASSWORD = "worker-secret"
WRONG_PASSWORD = "not-the-password-7731"
# The password of tls/client-key-encrypted.pem (deploy/local/make_tls.py), test-only too.
CLIENT_KEY_PASSWORD = "client-key-secret"
SEGMENT = "seg-secured"
# A refused login must end `run` and `check` this fast: no retry loop, no hang.
START_UP_LIMIT_S = 60
# Puts sitecustomize.py on a worker's PYTHONPATH: AWS_MSK_IAM tokens become unsigned JWTs.
OAUTH_STUB = Path(__file__).parent / "oauth_stub"
# Static, fake AWS credentials and nothing else: no shared files, no instance metadata.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIDLOCALTEST",
    "AWS_SECRET_ACCESS_KEY": "local-test-secret",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
}


@dataclass(frozen=True)
class Listeners:
    sasl: str  # SASL_PLAINTEXT
    sasl_ssl: str  # SASL_SSL
    ssl: str  # SSL, client certificates required
    tls: Path  # ca.pem, client.pem, client-key.pem, client-key-encrypted.pem


def _reachable(address: str) -> str | None:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return None
    except OSError as exc:
        return f"{address}: {exc.strerror or exc!r}"


@pytest.fixture(scope="module")
def listeners(stack: Stack) -> Listeners:
    found = Listeners(
        sasl=os.environ.get("KAFKA_SASL_BOOTSTRAP", "127.0.0.1:9094"),
        sasl_ssl=os.environ.get("KAFKA_SASL_SSL_BOOTSTRAP", "127.0.0.1:9095"),
        ssl=os.environ.get("KAFKA_SSL_BOOTSTRAP", "127.0.0.1:9096"),
        tls=Path(os.environ.get("KAFKA_TLS_DIR", str(REPO / ".stack" / "tls"))),
    )
    hint = (
        "the local broker has no SASL/TLS test listeners; it was probably started by an "
        "older deploy/local/stack.sh: restart the stack ('make stack-down stack-up', or "
        "deploy/local/stack.sh down && deploy/local/stack.sh up), then export its "
        "'deploy/local/stack.sh env' (KAFKA_SASL_BOOTSTRAP...)"
    )
    if "KAFKA_SASL_BOOTSTRAP" not in os.environ:
        hint += "; KAFKA_SASL_BOOTSTRAP is not set, the default ports 9094-9096 were tried"
    problems = [p for p in map(_reachable, (found.sasl, found.sasl_ssl, found.ssl)) if p]
    if problems:
        pytest.fail(f"secured Kafka listeners not reachable ({'; '.join(problems)}): {hint}")
    for name in ("ca.pem", "client.pem", "client-key.pem", "client-key-encrypted.pem"):
        if not (found.tls / name).is_file():
            pytest.fail(f"no {found.tls / name} (KAFKA_TLS_DIR): {hint}")
    return found


def kafka_security(
    listeners: Listeners, case: str, password: str = SASL_PASSWORD
) -> dict[str, Any]:
    """The `kafka` keys (bootstrap_servers included) of one way to connect."""
    ca = str(listeners.tls / "ca.pem")
    sasl = {"sasl_username": SASL_USER, "sasl_password": password}
    cases: dict[str, dict[str, Any]] = {
        "sasl-plain": {
            "bootstrap_servers": listeners.sasl,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            **sasl,
        },
        "sasl-scram-sha-256": {
            "bootstrap_servers": listeners.sasl,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256",
            **sasl,
        },
        "sasl-ssl-scram-sha-512": {
            "bootstrap_servers": listeners.sasl_ssl,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "ssl_cafile": ca,
            **sasl,
        },
        # SASL_SSL's OAUTHBEARER is checked by Kafka's unsecured validator, which takes
        # the unsigned JWTs of OAUTH_STUB and refuses real (AWS-signed) tokens.
        "msk-iam": {
            "bootstrap_servers": listeners.sasl_ssl,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "AWS_MSK_IAM",
            "aws_region": "us-east-1",
            "ssl_cafile": ca,
        },
        "mtls": {
            "bootstrap_servers": listeners.ssl,
            "security_protocol": "SSL",
            "ssl_cafile": ca,
            "ssl_certfile": str(listeners.tls / "client.pem"),
            "ssl_keyfile": str(listeners.tls / "client-key-encrypted.pem"),
            "ssl_key_password": CLIENT_KEY_PASSWORD,
        },
    }
    return cases[case]


class Setup:
    """Topics and a stream for one test; the worker's configuration."""

    def __init__(self, stack: Stack, workdir: Path) -> None:
        self.stack = stack
        self.workdir = workdir
        self.name = f"sec-{uuid.uuid4().hex[:8]}"
        self.q_topic = f"{self.name}-qualifications"
        self.p_topic = f"{self.name}-profiles"
        self.stream = f"{self.name}-stream"
        self.kinesis = stack.kinesis()
        self.created = False

    def create(self) -> None:
        topics = [NewTopic(self.q_topic, 2, 1), NewTopic(self.p_topic, 2, 1)]
        run_sync(admin_call(self.stack.kafka_bootstrap, lambda a: a.create_topics(topics)))
        self.created = True
        self.kinesis.create_stream(StreamName=self.stream, ShardCount=1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            summary = self.kinesis.describe_stream_summary(StreamName=self.stream)
            if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                return
            time.sleep(0.2)
        pytest.fail(f"stream {self.stream} not ACTIVE after 30s")

    def destroy(self) -> None:
        if not self.created:
            return

        async def delete(admin: Any) -> None:
            # The input topics, the dead-letter topic and Faust's changelog topics.
            names = [t for t in await admin.list_topics() if t.startswith(self.name)]
            if names:
                await admin.delete_topics(names)

        run_sync(admin_call(self.stack.kafka_bootstrap, delete))
        self.kinesis.delete_stream(StreamName=self.stream, EnforceConsumerDeletion=True)

    def config(self, kafka: dict[str, Any]) -> dict[str, Any]:
        return {
            "app_id": self.name,
            "kafka": {
                "qualifications_topic": self.q_topic,
                "profiles_topic": self.p_topic,
                "dlq_topic": f"{self.name}-dlq",
                **kafka,
            },
            "destinations": [
                {
                    "name": "Secured",
                    "stream": self.stream,
                    "region": "us-east-1",
                    "endpoint_url": self.stack.kinesis_endpoint,
                    "auth": {"access_key_id": "testing", "secret_access_key": "testing"},
                    "partition_key_namespaces": ["ecid"],
                    "segments": [{"id": SEGMENT}],
                    "attributes": ["person.email"],
                }
            ],
            "runtime": {"store": "memory://", "batch_linger_ms": 20, "session_timeout_ms": 6000},
        }

    def write(self, kafka: dict[str, Any], name: str = "config") -> Path:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(self.config(kafka)))
        return path


@pytest.fixture
def setup(stack: Stack, tmp_path: Path) -> Iterator[Setup]:
    found = Setup(stack, tmp_path)
    try:
        yield found
    finally:
        found.destroy()


def _cli(
    *args: str, timeout: float = START_UP_LIMIT_S, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return result, time.monotonic() - started


# -- the worker exports through each kind of secured listener ---------------------------


@pytest.mark.parametrize("case", ["sasl-plain", "sasl-ssl-scram-sha-512", "mtls", "msk-iam"])
def test_export_through_a_secured_listener(
    listeners: Listeners,
    setup: Setup,
    case: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """msk-iam: the worker's AWS_MSK_IAM path with unsigned tokens (see OAUTH_STUB)."""
    if case == "msk-iam":
        monkeypatch.setenv("PYTHONPATH", str(OAUTH_STUB))
        monkeypatch.setenv("TEST_UNSECURED_MSK_IAM_TOKENS", "1")
    setup.create()
    worker = WorkerProcess(setup.config(kafka_security(listeners, case)), setup.workdir)
    started = time.monotonic()
    try:
        worker.start()  # preflight, changelog topics, group join, table recovery: all secured
        ready_s = time.monotonic() - started
        profile = f"p-{case}"
        ids = {"ecid": [{"id": f"ecid-{setup.name}"}]}
        run_sync(
            produce(
                setup.stack.kafka_bootstrap,
                [
                    (
                        setup.p_topic,
                        profile.encode(),
                        profile_update(profile, {"person": {"email": "s@x.io"}}, ids),
                    )
                ],
            )
        )
        deadline = time.monotonic() + 30
        while worker.metric("kd_events_total") < 1:
            assert time.monotonic() < deadline, f"profile update not consumed:\n{worker.log()}"
            time.sleep(0.1)
        run_sync(
            produce(
                setup.stack.kafka_bootstrap,
                [
                    (
                        setup.q_topic,
                        profile.encode(),
                        qualification(profile, SEGMENT, "realized", "2024-01-01T00:00:00Z"),
                    )
                ],
            )
        )
        records = StreamReader(setup.kinesis, setup.stream).wait_for(f"ecid-{setup.name}", 1)
        assert records == [
            {
                "person": {"email": "s@x.io"},
                "segmentMembership": {
                    "ups": {
                        SEGMENT: {
                            "lastQualificationTime": "2024-01-01T00:00:00Z",
                            "status": "realized",
                        }
                    }
                },
                "identityMap": ids,
            }
        ], worker.log()
    finally:
        code = worker.stop()
    assert code == 0, worker.log()
    log = worker.log(10_000)
    for secret in (SASL_PASSWORD, CLIENT_KEY_PASSWORD):
        assert secret not in log, "a Kafka secret was logged"
    with capsys.disabled():
        print(f"\n[{case}] ready in {ready_s:.1f}s, exported in {time.monotonic() - started:.1f}s")


# -- check and run at start-up ------------------------------------------------------------


@pytest.mark.parametrize("case", ["sasl-plain", "sasl-scram-sha-256", "sasl-ssl-scram-sha-512"])
def test_check_passes_with_the_right_credentials(
    listeners: Listeners, setup: Setup, case: str
) -> None:
    setup.create()
    result, _ = _cli("check", "--config", str(setup.write(kafka_security(listeners, case))))
    assert result.returncode == 0, result.stderr
    assert "ok  kafka: input topics co-partitioned (2 partitions)" in result.stdout


@pytest.mark.parametrize("case", ["sasl-plain", "sasl-ssl-scram-sha-512"])
def test_a_wrong_password_stops_check_and_run_at_once(
    listeners: Listeners, setup: Setup, case: str
) -> None:
    setup.create()
    path = setup.write(kafka_security(listeners, case, password=WRONG_PASSWORD))

    check, check_s = _cli("check", "--config", str(path))
    assert check.returncode == 1, check.stdout + check.stderr
    assert "FAIL kafka: kafka.sasl_password:" in check.stderr
    assert f"refused user '{SASL_USER}'" in check.stderr

    data_dir, port = str(setup.workdir / "data"), str(free_port())
    run, run_s = _cli("run", "--config", str(path), "--data-dir", data_dir, "--web-port", port)
    assert run.returncode == 2, run.stdout + run.stderr
    # Either the message names the key (preflight explains the failure), or it says
    # Kafka cannot be reached and the log line before it gives the broker's reason.
    assert "error: kafka.sasl_password:" in run.stderr or (
        "error: kafka.bootstrap_servers: cannot reach Kafka" in run.stderr
        and "SaslAuthenticationFailed" in run.stdout + run.stderr
    ), run.stdout + run.stderr

    for result in (check, run):
        assert WRONG_PASSWORD not in result.stdout + result.stderr, "the password was printed"
    assert max(check_s, run_s) < START_UP_LIMIT_S


def test_a_refused_msk_iam_token_is_reported(listeners: Listeners, setup: Setup) -> None:
    # A real, AWS-signed token: the local broker's unsecured validator refuses it, like
    # MSK refuses a token whose identity lacks kafka-cluster:Connect.
    path = setup.write(kafka_security(listeners, "msk-iam"))
    result, seconds = _cli("check", "--config", str(path), env=FAKE_AWS)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL kafka: kafka.sasl_mechanism: " in result.stderr, result.stderr
    assert "after the AWS_MSK_IAM login" in result.stderr
    assert seconds < START_UP_LIMIT_S


@pytest.mark.parametrize(
    ("case", "change", "expected"),
    [
        pytest.param(
            "sasl-ssl-scram-sha-512",
            {"ssl_cafile": None},
            "kafka.ssl_cafile: the certificate of {address} is not trusted by the system's CAs",
            id="broker-certificate-not-trusted",
        ),
        pytest.param(
            "mtls",
            {"ssl_certfile": None, "ssl_keyfile": None, "ssl_key_password": None},
            "kafka.ssl_certfile: {address} closed the connection after the TLS handshake",
            id="client-certificate-missing",
        ),
        pytest.param(
            "sasl-plain",
            {"security_protocol": "PLAINTEXT", "sasl_mechanism": None},
            "kafka.security_protocol: {address} closed the connection",
            id="plaintext-on-a-sasl-listener",
        ),
        pytest.param(
            "sasl-plain",
            {"security_protocol": "SASL_SSL", "ssl_cafile": "{tls}/ca.pem"},
            "kafka.security_protocol: {address} reset the connection during the TLS handshake",
            id="tls-on-a-plaintext-listener",
        ),
    ],
)
def test_check_names_the_key_of_a_connection_mistake(
    listeners: Listeners, setup: Setup, case: str, change: dict[str, Any], expected: str
) -> None:
    kafka = kafka_security(listeners, case)
    for key, value in change.items():
        if value is None:
            kafka.pop(key, None)
        else:
            kafka[key] = value.format(tls=listeners.tls) if isinstance(value, str) else value
    if kafka.get("sasl_mechanism") is None:
        for key in ("sasl_mechanism", "sasl_username", "sasl_password"):
            kafka.pop(key, None)
    result, seconds = _cli("check", "--config", str(setup.write(kafka)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected.format(address=kafka["bootstrap_servers"]) in result.stderr, result.stderr
    assert seconds < START_UP_LIMIT_S
