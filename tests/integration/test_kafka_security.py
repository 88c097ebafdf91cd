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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Deployment, cli, one_stream, unique
from tests.support import REPO, Stack, free_port, profile_update, qualification

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


@pytest.fixture
def setup(stack: Stack, tmp_path: Path) -> Iterator[Deployment]:
    """Two partitions, one stream; created by the tests that need them."""
    found = Deployment(
        stack,
        unique("sec"),
        tmp_path,
        partitions=2,
        destinations=one_stream("Secured", [SEGMENT]),
        shards=1,
    )
    try:
        yield found
    finally:
        found.destroy()


# -- the worker exports through each kind of secured listener ---------------------------


@pytest.mark.parametrize("case", ["sasl-plain", "sasl-ssl-scram-sha-512", "mtls", "msk-iam"])
def test_export_through_a_secured_listener(
    listeners: Listeners,
    setup: Deployment,
    case: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """msk-iam: the worker's AWS_MSK_IAM path with unsigned tokens (see OAUTH_STUB)."""
    if case == "msk-iam":
        monkeypatch.setenv("PYTHONPATH", str(OAUTH_STUB))
        monkeypatch.setenv("TEST_UNSECURED_MSK_IAM_TOKENS", "1")
    setup.create()
    worker = setup.worker(kafka=kafka_security(listeners, case))
    started = time.monotonic()
    try:
        worker.start()  # preflight, changelog topics, group join, table recovery: all secured
        ready_s = time.monotonic() - started
        profile = f"p-{case}"
        ids = {"ecid": [{"id": f"ecid-{setup.name}"}]}
        setup.send(
            ("p", profile, profile_update(profile, {"person": {"email": "s@x.io"}}, ids)),
            ("q", profile, qualification(profile, SEGMENT, "realized", "2024-01-01T00:00:00Z")),
            timeout=30,
        )
        records = setup.records(0, f"ecid-{setup.name}", 1)
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
    listeners: Listeners, setup: Deployment, case: str
) -> None:
    setup.create()
    result, _ = cli(
        "check",
        "--config",
        str(setup.write_config(kafka=kafka_security(listeners, case))),
        timeout=START_UP_LIMIT_S,
    )
    assert result.returncode == 0, result.stderr
    assert "ok  kafka: input topics co-partitioned (2 partitions)" in result.stdout


@pytest.mark.parametrize("case", ["sasl-plain", "sasl-ssl-scram-sha-512"])
def test_a_wrong_password_stops_check_and_run_at_once(
    listeners: Listeners, setup: Deployment, case: str
) -> None:
    setup.create()
    path = setup.write_config(kafka=kafka_security(listeners, case, password=WRONG_PASSWORD))

    check, check_s = cli("check", "--config", str(path), timeout=START_UP_LIMIT_S)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "FAIL kafka: kafka.sasl_password:" in check.stderr
    assert f"refused user '{SASL_USER}'" in check.stderr

    data_dir, port = str(setup.workdir / "data"), str(free_port())
    run, run_s = cli(
        "run",
        "--config",
        str(path),
        "--data-dir",
        data_dir,
        "--web-port",
        port,
        timeout=START_UP_LIMIT_S,
    )
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


def test_a_refused_msk_iam_token_is_reported(listeners: Listeners, setup: Deployment) -> None:
    # A real, AWS-signed token: the local broker's unsecured validator refuses it, like
    # MSK refuses a token whose identity lacks kafka-cluster:Connect.
    path = setup.write_config(kafka=kafka_security(listeners, "msk-iam"))
    result, seconds = cli("check", "--config", str(path), timeout=START_UP_LIMIT_S, env=FAKE_AWS)
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
    listeners: Listeners, setup: Deployment, case: str, change: dict[str, Any], expected: str
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
    result, seconds = cli(
        "check", "--config", str(setup.write_config(kafka=kafka)), timeout=START_UP_LIMIT_S
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected.format(address=kafka["bootstrap_servers"]) in result.stderr, result.stderr
    assert seconds < START_UP_LIMIT_S
