"""Kafka security: the `kafka` keys' validation, and their mapping to Faust and aiokafka."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import faust
import pytest
import yaml
from aiokafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from deploy.local.make_tls import CLIENT_KEY_PASSWORD, make
from worker import kafka_client
from worker.kafka_client import (
    MskIamTokenProvider,
    broker_credentials,
    kafka_client_kwargs,
    ssl_context,
)
from worker.logs import secret_values
from worker.settings import ConfigError, KafkaSettings, Settings, load_settings

PASSWORD = "Kafka-S3cret-do-not-print-5150"
DESTINATION = {"name": "Main", "stream": "s", "region": "us-east-1", "segments": [{"id": "a"}]}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, client certificate and keys, as the local stack makes them."""
    folder = tmp_path_factory.mktemp("tls")
    make(folder)
    return folder


def load(tmp_path: Path, kafka: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"kafka": kafka, "destinations": [DESTINATION]}))
    return load_settings(path, environ=environ or {})


def error(tmp_path: Path, kafka: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, kafka)
    return str(caught.value)


def client_certificate(tls: Path, password: str = CLIENT_KEY_PASSWORD.decode()) -> dict[str, str]:
    """The local stack's client certificate, its encrypted key and that key's password."""
    return {
        "ssl_certfile": str(tls / "client.pem"),
        "ssl_keyfile": str(tls / "client-key-encrypted.pem"),
        "ssl_key_password": password,
    }


def in_tls(kafka: dict[str, Any], tls: Path) -> dict[str, Any]:
    """The ``kafka`` keys with ``{tls}`` in their values replaced by the TLS folder."""
    return {k: v.format(tls=tls) if isinstance(v, str) else v for k, v in kafka.items()}


SASL_PLAIN = {
    "security_protocol": "SASL_PLAINTEXT",
    "sasl_mechanism": "PLAIN",
    "sasl_username": "worker",
    "sasl_password": PASSWORD,
}
MSK_IAM = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "AWS_MSK_IAM",
    "aws_region": "eu-west-1",
}


# -- settings ---------------------------------------------------------------------------


def test_plaintext_is_the_default(tmp_path: Path) -> None:
    kafka = load(tmp_path, {}).kafka
    assert kafka.security_protocol == "PLAINTEXT"
    assert kafka.sasl_mechanism is None
    assert kafka.ssl_check_hostname is True
    assert kafka_client_kwargs(kafka) == {"security_protocol": "PLAINTEXT"}
    assert broker_credentials(kafka) is None


@pytest.mark.parametrize(
    "kafka",
    [
        pytest.param(SASL_PLAIN, id="sasl-plain"),
        pytest.param({**SASL_PLAIN, "sasl_mechanism": "SCRAM-SHA-256"}, id="scram-256"),
        pytest.param(
            {**SASL_PLAIN, "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"},
            id="sasl-ssl-scram-512",
        ),
        pytest.param({"security_protocol": "SSL"}, id="tls-system-cas"),
        pytest.param(MSK_IAM, id="msk-iam"),
        pytest.param(
            {**MSK_IAM, "aws_role_arn": "arn:aws:iam::123456789012:role/msk-worker"},
            id="msk-iam-role",
        ),
        pytest.param(
            {"security_protocol": "sasl_ssl", "sasl_mechanism": "scram-sha-512"}
            | {"sasl_username": "u", "sasl_password": "p"},
            id="lower-case",
        ),
    ],
)
def test_valid_combinations_load(tmp_path: Path, kafka: dict[str, Any]) -> None:
    loaded = load(tmp_path, kafka).kafka
    assert loaded.security_protocol == kafka["security_protocol"].upper()


def test_tls_files(tmp_path: Path, tls: Path) -> None:
    kafka = load(
        tmp_path,
        {
            "security_protocol": "SSL",
            "ssl_cafile": str(tls / "ca.pem"),
            **client_certificate(tls),
            "ssl_check_hostname": False,
        },
    ).kafka
    assert kafka.ssl_cafile == tls / "ca.pem"
    assert kafka.ssl_check_hostname is False


@pytest.mark.parametrize(
    ("kafka", "expected"),
    [
        pytest.param(
            {"security_protocol": "TLS"},
            "kafka.security_protocol: Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or "
            "'SASL_SSL'",
            id="unknown-protocol",
        ),
        pytest.param(
            {"security_protocol": "SASL_SSL"},
            "kafka.sasl_mechanism: required when security_protocol is SASL_SSL",
            id="sasl-without-mechanism",
        ),
        pytest.param(
            {**SASL_PLAIN, "sasl_mechanism": "GSSAPI"},
            "kafka.sasl_mechanism: Input should be 'PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512' or "
            "'AWS_MSK_IAM'",
            id="unsupported-mechanism",
        ),
        pytest.param(
            {"sasl_mechanism": "PLAIN"},
            "kafka.sasl_mechanism: only used with security_protocol SASL_PLAINTEXT or SASL_SSL "
            "(security_protocol is PLAINTEXT)",
            id="mechanism-without-sasl",
        ),
        pytest.param(
            {k: v for k, v in SASL_PLAIN.items() if k != "sasl_password"},
            "kafka.sasl_password: required with sasl_mechanism PLAIN",
            id="plain-without-password",
        ),
        pytest.param(
            {**{k: v for k, v in SASL_PLAIN.items() if k != "sasl_username"}}
            | {"sasl_mechanism": "SCRAM-SHA-512"},
            "kafka.sasl_username: required with sasl_mechanism SCRAM-SHA-512",
            id="scram-without-username",
        ),
        pytest.param(
            {"sasl_username": "u"},
            "kafka.sasl_username: only used with security_protocol SASL_PLAINTEXT or SASL_SSL",
            id="username-without-sasl",
        ),
        pytest.param(
            {**MSK_IAM, "security_protocol": "SASL_PLAINTEXT"},
            "kafka.sasl_mechanism: AWS_MSK_IAM needs security_protocol SASL_SSL",
            id="iam-without-tls",
        ),
        pytest.param(
            {k: v for k, v in MSK_IAM.items() if k != "aws_region"},
            "kafka.aws_region: required with sasl_mechanism AWS_MSK_IAM",
            id="iam-without-region",
        ),
        pytest.param(
            {**MSK_IAM, "aws_region": "Ireland"},
            "kafka.aws_region: 'Ireland' is not an AWS region name such as us-east-1",
            id="iam-bad-region",
        ),
        pytest.param(
            {**MSK_IAM, "sasl_username": "u", "sasl_password": PASSWORD},
            "kafka.sasl_password: not used with sasl_mechanism AWS_MSK_IAM",
            id="iam-with-password",
        ),
        pytest.param(
            {**MSK_IAM, "aws_role_arn": "msk-worker"},
            "kafka.aws_role_arn: not an IAM role ARN",
            id="iam-bad-role",
        ),
        pytest.param(
            {**SASL_PLAIN, "aws_region": "us-east-1"},
            "kafka.aws_region: only used with sasl_mechanism AWS_MSK_IAM",
            id="region-without-iam",
        ),
        pytest.param(
            {**SASL_PLAIN, "aws_role_arn": "arn:aws:iam::123456789012:role/x"},
            "kafka.aws_role_arn: only used with sasl_mechanism AWS_MSK_IAM",
            id="role-without-iam",
        ),
        pytest.param(
            {"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
            "kafka.ssl_cafile: no such file: /nonexistent/ca.pem",
            id="missing-ca-file",
        ),
        pytest.param(
            {**SASL_PLAIN, "ssl_cafile": "/nonexistent/ca.pem"},
            "kafka.ssl_cafile: only used with security_protocol SSL or SASL_SSL "
            "(security_protocol is SASL_PLAINTEXT)",
            id="ca-file-without-tls",
        ),
        pytest.param(
            {"security_protocol": "SSL", "ssl_keyfile": "{tls}/client-key.pem"},
            "kafka.ssl_keyfile: needs ssl_certfile",
            id="key-without-certificate",
        ),
        pytest.param(
            {"security_protocol": "SSL", "ssl_key_password": "x"},
            "kafka.ssl_key_password: needs ssl_certfile",
            id="key-password-without-key",
        ),
        pytest.param(
            {"security_protocol": "SSL", "ssl_check_hostname": "maybe"},
            "kafka.ssl_check_hostname: Input should be a valid boolean",
            id="check-hostname-not-boolean",
        ),
    ],
)
def test_mistakes_name_the_key(
    tmp_path: Path, tls: Path, kafka: dict[str, Any], expected: str
) -> None:
    message = error(tmp_path, in_tls(kafka, tls))
    assert expected in message
    assert PASSWORD not in message


def test_every_key_from_the_environment(tmp_path: Path, tls: Path) -> None:
    environ = {
        "KD_KAFKA__BOOTSTRAP_SERVERS": "b-1.example:9096,b-2.example:9096",
        "KD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "KD_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "KD_KAFKA__SASL_USERNAME": "worker",
        "KD_KAFKA__SASL_PASSWORD": PASSWORD,
        "KD_KAFKA__SSL_CAFILE": str(tls / "ca.pem"),
        "KD_KAFKA__SSL_CHECK_HOSTNAME": "false",
    }
    kafka = load(tmp_path, {}, environ).kafka
    assert kafka.security_protocol == "SASL_SSL"
    assert kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert kafka.sasl_password is not None
    assert kafka.sasl_password.get_secret_value() == PASSWORD
    assert kafka.ssl_cafile == tls / "ca.pem"
    assert kafka.ssl_check_hostname is False

    iam = load(
        tmp_path,
        {},
        {
            "KD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "KD_KAFKA__SASL_MECHANISM": "AWS_MSK_IAM",
            "KD_KAFKA__AWS_REGION": "us-west-2",
            "KD_KAFKA__AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/msk-worker",
        },
    ).kafka
    assert (iam.aws_region, iam.aws_role_arn) == (
        "us-west-2",
        "arn:aws:iam::123456789012:role/msk-worker",
    )


def test_secrets_are_masked_and_known_to_the_log_redaction(tmp_path: Path, tls: Path) -> None:
    settings = load(
        tmp_path,
        {**SASL_PLAIN, "security_protocol": "SASL_SSL", **client_certificate(tls)},
    )
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert PASSWORD not in text
        assert CLIENT_KEY_PASSWORD.decode() not in text
    assert {PASSWORD, CLIENT_KEY_PASSWORD.decode()} <= set(secret_values(settings))
    credentials = broker_credentials(settings.kafka)
    assert PASSWORD not in repr(credentials)


# -- the mapping to aiokafka and Faust --------------------------------------------------


def _comparable(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments with the SSL context and token provider replaced by what matters."""
    result = {k: v for k, v in kwargs.items() if v is not None}
    context = result.pop("ssl_context", None)
    if context is not None:
        result["ssl"] = (context.check_hostname, context.verify_mode, len(context.get_ca_certs()))
    provider = result.pop("sasl_oauth_token_provider", None)
    if provider is not None:
        result["provider"] = (type(provider), provider.region, provider.role_arn)
    return result


@pytest.mark.parametrize(
    ("kafka", "expected"),
    [
        pytest.param(
            SASL_PLAIN,
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "worker",
                "sasl_plain_password": PASSWORD,
            },
            id="sasl-plain",
        ),
        pytest.param(
            {**SASL_PLAIN, "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"}
            | {"ssl_cafile": "{tls}/ca.pem"},
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "worker",
                "sasl_plain_password": PASSWORD,
                "ssl": (True, ssl.CERT_REQUIRED, 1),
            },
            id="sasl-ssl-scram",
        ),
        pytest.param(
            {
                "security_protocol": "SSL",
                "ssl_cafile": "{tls}/ca.pem",
                "ssl_certfile": "{tls}/client.pem",
                "ssl_keyfile": "{tls}/client-key.pem",
                "ssl_check_hostname": False,
            },
            {"security_protocol": "SSL", "ssl": (False, ssl.CERT_REQUIRED, 1)},
            id="mtls-no-hostname-check",
        ),
        pytest.param(
            {**MSK_IAM, "aws_role_arn": "arn:aws:iam::123456789012:role/msk"},
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "provider": (
                    MskIamTokenProvider,
                    "eu-west-1",
                    "arn:aws:iam::123456789012:role/msk",
                ),
                "ssl": (True, ssl.CERT_REQUIRED, None),
            },
            id="msk-iam",
        ),
    ],
)
def test_aiokafka_kwargs_and_faust_credentials_agree(
    tmp_path: Path, tls: Path, kafka: dict[str, Any], expected: dict[str, Any]
) -> None:
    settings = load(tmp_path, in_tls(kafka, tls)).kafka
    ours = _comparable(kafka_client_kwargs(settings))
    if expected.get("ssl", (0, 0, 0))[2] is None:  # the system's CAs: however many there are
        ours["ssl"] = (*ours["ssl"][:2], None)
    assert ours == expected
    # What Faust's aiokafka driver makes of broker_credentials is the same.
    credentials = broker_credentials(settings)
    faust_kwargs = _comparable(credentials_to_aiokafka_auth(credentials))
    if "ssl" in expected and expected["ssl"][2] is None:
        faust_kwargs["ssl"] = (*faust_kwargs["ssl"][:2], None)
    assert faust_kwargs == expected
    kinds = {
        "SASL_PLAINTEXT": faust.SASLCredentials,
        "SSL": faust.SSLCredentials,
        "SASL_SSL": faust.OAuthCredentials
        if settings.sasl_mechanism == "AWS_MSK_IAM"
        else faust.SASLCredentials,
    }
    assert type(credentials) is kinds[settings.security_protocol]


def test_client_certificate_with_a_wrong_key_password(tmp_path: Path, tls: Path) -> None:
    settings = load(
        tmp_path,
        {"security_protocol": "SSL", **client_certificate(tls, password="wrong-password")},
    ).kafka
    with pytest.raises(ConfigError) as caught:
        kafka_client_kwargs(settings)
    assert str(caught.value).startswith(
        "kafka.ssl_certfile, kafka.ssl_keyfile, kafka.ssl_key_password: cannot load the client "
        "certificate and key"
    )
    assert "wrong-password" not in str(caught.value)


def test_a_ca_file_that_holds_no_certificate(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    settings = load(tmp_path, {"security_protocol": "SSL", "ssl_cafile": str(bogus)}).kafka
    with pytest.raises(ConfigError, match=r"^kafka\.ssl_cafile: cannot load CA certificates"):
        ssl_context(settings)


# -- AWS_MSK_IAM tokens ----------------------------------------------------------------


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Static test credentials; no shared files, no instance metadata."""
    for name in ("AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLEKAFKA")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key")
    return monkeypatch


def _signed_url(token: str) -> tuple[str, dict[str, list[str]]]:
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    return url, parse_qs(urlparse(url).query)


async def test_msk_iam_token_is_a_presigned_connect_request(
    aws_environment: pytest.MonkeyPatch,
) -> None:
    provider = MskIamTokenProvider("eu-west-1")
    token = await provider.token()
    url, query = _signed_url(token)
    assert url.startswith("https://kafka.eu-west-1.amazonaws.com/?")
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("AKIDEXAMPLEKAFKA/")
    assert query["X-Amz-Credential"][0].endswith("/eu-west-1/kafka-cluster/aws4_request")
    assert query["X-Amz-Expires"] == ["900"]
    assert await provider.token() == token, "reused for new connections"


async def test_msk_iam_token_with_an_assumed_role(aws_environment: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    with mock_aws():
        provider = MskIamTokenProvider("us-east-1", "arn:aws:iam::123456789012:role/msk-worker")
        _, query = _signed_url(provider.token_now())
    credential = query["X-Amz-Credential"][0]
    assert not credential.startswith("AKIDEXAMPLEKAFKA/"), "signed with the role's credentials"
    assert "X-Amz-Security-Token" in query


async def test_msk_iam_without_credentials_is_a_connection_error(
    aws_environment: pytest.MonkeyPatch,
) -> None:
    aws_environment.delenv("AWS_ACCESS_KEY_ID")
    aws_environment.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(
        KafkaConnectionError, match=r"AWS_MSK_IAM: cannot sign .* no AWS credentials"
    ):
        await MskIamTokenProvider("eu-west-1").token()


# -- check's explanations of connection failures ------------------------------------------


def test_explanations_name_the_key(tmp_path: Path) -> None:
    iam = load(tmp_path, MSK_IAM).kafka
    refused = SaslAuthenticationFailed("Access denied")
    assert kafka_client._explain(iam, "b-1:9098", refused) == (
        "kafka.sasl_mechanism: b-1:9098 refused the AWS_MSK_IAM login (Access denied); the "
        "worker's AWS identity needs kafka-cluster:Connect on the cluster, and "
        "kafka.aws_region must be the cluster's region"
    )
    mismatch = ssl.SSLCertVerificationError(1, "certificate verify failed")
    mismatch.verify_code = 62
    mismatch.verify_message = "Hostname mismatch, certificate is not valid for '10.0.0.1'."
    message = kafka_client._explain(iam, "10.0.0.1:9098", mismatch)
    assert message is not None
    assert message.startswith("kafka.bootstrap_servers: the certificate of 10.0.0.1:9098")
    assert "kafka.ssl_check_hostname: false" in message
    unsigned = KafkaConnectionError("AWS_MSK_IAM: cannot sign an MSK auth token for region x")
    assert kafka_client._explain(iam, "b-1:9098", unsigned) == (
        "kafka.sasl_mechanism: AWS_MSK_IAM: cannot sign an MSK auth token for region x"
    )
    closed = KafkaConnectionError("Connection at b-1:9098 closed")
    assert kafka_client._explain(iam, "b-1:9098", closed) == (
        "kafka.sasl_mechanism: b-1:9098 closed the connection after the AWS_MSK_IAM login, as "
        "brokers do when they refuse the token; the worker's AWS identity needs "
        "kafka-cluster:Connect on the cluster, and kafka.aws_region must be the cluster's region"
    )
    unsupported = UnsupportedSaslMechanismError(object())  # aiokafka passes the connection
    assert kafka_client._explain(iam, "b-1:9098", unsupported) == (
        "kafka.sasl_mechanism: b-1:9098 does not offer SASL mechanism OAUTHBEARER "
        "(for AWS_MSK_IAM)."
    )
    assert kafka_client._explain(iam, "b-1:9098", ConnectionRefusedError()) is None
    assert kafka_client._explain(iam, "b-1:9098", TimeoutError()) is None


def test_msk_iam_without_the_signer_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "aws_msk_iam_sasl_signer", None)
    with pytest.raises(ConfigError, match=r"^kafka\.sasl_mechanism: AWS_MSK_IAM needs"):
        kafka_client_kwargs(load(tmp_path, MSK_IAM).kafka)


def test_kafka_settings_alone_validate_too() -> None:
    # KafkaSettings is also built directly (tools, tests): the same checks apply.
    with pytest.raises(ValueError, match="sasl_mechanism"):
        KafkaSettings(security_protocol="SASL_SSL")
