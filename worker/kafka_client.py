"""How the worker connects to Kafka: the ``kafka`` security keys, mapped for Faust and aiokafka.

Two views of the same settings:

- :func:`broker_credentials` is Faust's ``broker_credentials`` (``faust.SSLCredentials``,
  ``faust.SASLCredentials`` or ``faust.OAuthCredentials``). Faust's aiokafka driver
  (``credentials_to_aiokafka_auth``) turns it into the same keyword arguments for its
  consumer, its producer and the client that creates the changelog topics. The
  broker URL stays ``kafka://``: the protocol is in the credentials, not the scheme.
- :func:`kafka_client_kwargs` gives those keyword arguments directly, for the clients
  the worker makes itself (``AIOKafkaAdminClient`` in preflight; any producer or
  consumer).

``AWS_MSK_IAM`` is SASL/OAUTHBEARER with a token from AWS's signer
(``aws-msk-iam-sasl-signer-python``): a SigV4-presigned ``kafka-cluster:Connect``
request, made with the AWS default credential chain or an assumed role.

Problems found while building these (a certificate that does not load, the
signer missing) raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from worker.settings import ConfigError, KafkaSettings

if TYPE_CHECKING:
    import faust.auth

# Tokens are valid 15 minutes (the signer's fixed expiry); one is reused for new
# connections for at most this long, so a burst of connects signs once.
TOKEN_REUSE_S = 300.0
ROLE_SESSION_NAME = "kinesis-destination"


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL, None for the plaintext protocols.

    Broker certificates are verified against ``ssl_cafile`` (else the system's
    CAs, which trust MSK's Amazon Trust Services certificates); the broker's
    name is checked unless ``ssl_check_hostname`` is false.
    """
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=kafka.ssl_cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"kafka.ssl_cafile: cannot load CA certificates from {kafka.ssl_cafile}: {_reason(exc)}"
        ) from None
    if kafka.ssl_certfile is not None:
        password = kafka.ssl_key_password
        try:
            context.load_cert_chain(
                kafka.ssl_certfile,
                kafka.ssl_keyfile,
                password.get_secret_value() if password is not None else None,
            )
        except (ssl.SSLError, OSError) as exc:
            keys = "kafka.ssl_certfile"
            if kafka.ssl_keyfile is not None:
                keys += ", kafka.ssl_keyfile"
            if password is not None:
                keys += ", kafka.ssl_key_password"
            raise ConfigError(
                f"{keys}: cannot load the client certificate and key: {_reason(exc)}"
            ) from None
    context.check_hostname = kafka.ssl_check_hostname
    return context


def kafka_client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Security keyword arguments for AIOKafkaAdminClient, AIOKafkaProducer, AIOKafkaConsumer."""
    kwargs: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    context = ssl_context(kafka)
    if context is not None:
        kwargs["ssl_context"] = context
    mechanism = kafka.sasl_mechanism
    if mechanism == "AWS_MSK_IAM":
        kwargs["sasl_mechanism"] = "OAUTHBEARER"
        kwargs["sasl_oauth_token_provider"] = msk_iam_token_provider(kafka)
    elif mechanism is not None:
        kwargs["sasl_mechanism"] = mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = _password(kafka)
    return kwargs


def broker_credentials(kafka: KafkaSettings) -> faust.auth.Credentials | None:
    """Faust's ``broker_credentials`` for these settings; None for PLAINTEXT."""
    import faust  # here: ``check`` and the configuration never load Faust

    context = ssl_context(kafka)
    mechanism = kafka.sasl_mechanism
    if kafka.security_protocol == "PLAINTEXT":
        return None
    if kafka.security_protocol == "SSL":
        assert context is not None
        return faust.SSLCredentials(context)
    # SASL_PLAINTEXT or SASL_SSL: Faust picks SASL_SSL exactly when a context is given.
    if mechanism == "AWS_MSK_IAM":
        return faust.OAuthCredentials(oauth_cb=msk_iam_token_provider(kafka), ssl_context=context)
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=_password(kafka),
        ssl_context=context,
        mechanism=mechanism,
    )


async def diagnose_connection(kafka: KafkaSettings, timeout_s: float = 15.0) -> str | None:
    """Why the worker cannot talk to the brokers, naming the key to fix; None if it can.

    aiokafka logs the cause of a failed bootstrap (a refused password, an
    untrusted certificate) and raises only "Unable to bootstrap"; this makes
    one connection per bootstrap server itself (TCP, TLS, SASL, a metadata
    request) and translates the first failure. Network failures (refused,
    timed out, unknown host) give None: "cannot reach" already says it.
    """
    kwargs = kafka_client_kwargs(kafka)
    for host, port, _ in collect_hosts(kafka.bootstrap_servers, randomize=False):
        try:
            async with asyncio.timeout(timeout_s):
                conn = await create_conn(
                    host,
                    port,
                    client_id="kinesis-destination-check",
                    request_timeout_ms=10_000,
                    **kwargs,
                )
                try:
                    metadata = await conn.send(MetadataRequest([]))
                finally:
                    conn.close()
        except Exception as exc:
            found = _explain(kafka, f"{host}:{port}", exc)
            if found is not None:
                return found
            continue
        if not metadata.brokers and kafka.sasl_mechanism == "AWS_MSK_IAM":
            # aiokafka does not read OAUTHBEARER error challenges: after a refused token
            # it carries on, and a broker may answer with no metadata instead of closing.
            return _iam_refused(f"{host}:{port}", "listed no brokers")
    return None


def _iam_refused(where: str, what: str) -> str:
    return (
        f"kafka.sasl_mechanism: {where} {what} after the AWS_MSK_IAM login, as brokers do "
        f"when they refuse the token; the worker's AWS identity needs kafka-cluster:Connect "
        f"on the cluster, and kafka.aws_region must be the cluster's region"
    )


def _explain(kafka: KafkaSettings, where: str, exc: BaseException) -> str | None:
    protocol, mechanism = kafka.security_protocol, kafka.sasl_mechanism
    if isinstance(exc, SaslAuthenticationFailed):
        detail = exc.args[0] if exc.args else str(exc)
        if mechanism == "AWS_MSK_IAM":
            return (
                f"kafka.sasl_mechanism: {where} refused the AWS_MSK_IAM login ({detail}); the "
                f"worker's AWS identity needs kafka-cluster:Connect on the cluster, and "
                f"kafka.aws_region must be the cluster's region"
            )
        return (
            f"kafka.sasl_password: {where} refused user {kafka.sasl_username!r} with "
            f"{mechanism} ({detail}); check kafka.sasl_username and kafka.sasl_password"
        )
    first = str(exc.args[0]) if exc.args else ""
    if isinstance(exc, KafkaConnectionError) and first.startswith("AWS_MSK_IAM:"):
        # MskIamTokenProvider could not sign: no credentials, or the role cannot be assumed.
        key = "kafka.aws_role_arn" if kafka.aws_role_arn else "kafka.sasl_mechanism"
        return f"{key}: {first}"
    if isinstance(exc, UnsupportedSaslMechanismError):
        sent = "OAUTHBEARER (for AWS_MSK_IAM)" if mechanism == "AWS_MSK_IAM" else mechanism
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        return (
            f"kafka.sasl_mechanism: {where} does not offer SASL mechanism {sent}. {detail}".strip()
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return (
                f"kafka.bootstrap_servers: the certificate of {where} is not for that name "
                f"({exc.verify_message}); use the name in the certificate, or set "
                f"kafka.ssl_check_hostname: false"
            )
        trusted = f"the CAs in {kafka.ssl_cafile}" if kafka.ssl_cafile else "the system's CAs"
        return (
            f"kafka.ssl_cafile: the certificate of {where} is not trusted by {trusted} "
            f"({exc.verify_message})"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"kafka.security_protocol: TLS with {where} failed ({_reason(exc)}); "
            f"is it a {protocol} listener?"
        )
    reset = isinstance(exc, ConnectionResetError)
    if reset or (isinstance(exc, KafkaConnectionError) and "closed" in str(exc)):
        if protocol == "SSL" and kafka.ssl_certfile is None:
            return (
                f"kafka.ssl_certfile: {where} closed the connection after the TLS handshake; "
                f"a listener that requires client certificates does that"
            )
        if mechanism == "AWS_MSK_IAM" and not reset:
            # aiokafka does not read OAUTHBEARER error challenges: a refused token looks
            # like a login that worked, then the broker closes the connection.
            return _iam_refused(where, "closed the connection")
        if reset and protocol in ("SSL", "SASL_SSL"):
            return (
                f"kafka.security_protocol: {where} reset the connection during the TLS "
                f"handshake; is it a {protocol} listener?"
            )
        return (
            f"kafka.security_protocol: {where} closed the connection; is it a {protocol} listener?"
        )
    return None


def _password(kafka: KafkaSettings) -> str | None:
    return kafka.sasl_password.get_secret_value() if kafka.sasl_password is not None else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def msk_iam_token_provider(kafka: KafkaSettings) -> MskIamTokenProvider:
    if kafka.aws_region is None:
        raise ConfigError("kafka.aws_region: required with sasl_mechanism AWS_MSK_IAM")
    try:
        import aws_msk_iam_sasl_signer  # noqa: F401
    except ImportError:
        raise ConfigError(
            "kafka.sasl_mechanism: AWS_MSK_IAM needs the Python package "
            "aws-msk-iam-sasl-signer-python (pip install aws-msk-iam-sasl-signer-python)"
        ) from None
    return MskIamTokenProvider(kafka.aws_region, kafka.aws_role_arn)


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER tokens for Amazon MSK IAM access control.

    Credentials come from the AWS default credential chain (environment,
    ``AWS_PROFILE``, web identity such as EKS IRSA, container or instance role)
    or, with ``role_arn``, from assuming that role with them; botocore renews
    both before they expire. Signing is local; resolving credentials may call
    STS or the instance metadata service, so it runs in a thread.
    """

    def __init__(self, region: str, role_arn: str | None = None) -> None:
        self.region = region
        self.role_arn = role_arn
        self._lock = threading.Lock()
        self._credentials: Any = None
        self._token: str | None = None
        self._reuse_until = 0.0

    async def token(self) -> str:
        return await asyncio.to_thread(self.token_now)

    def token_now(self) -> str:
        """A valid token; raises KafkaConnectionError (retried as a connection failure)."""
        with self._lock:
            now = time.time()
            if self._token is not None and now < self._reuse_until:
                return self._token
            try:
                token, expires_ms = self._sign()
            except Exception as exc:
                # A KafkaError lets aiokafka treat it as a failed connection (logged,
                # retried) rather than crash the client.
                raise KafkaConnectionError(
                    f"AWS_MSK_IAM: cannot sign an MSK auth token for region {self.region}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._token = token
            self._reuse_until = min(now + TOKEN_REUSE_S, expires_ms / 1000 - 60)
            return token

    def _sign(self) -> tuple[str, int]:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
        from botocore.credentials import CredentialProvider

        credentials = self._load_credentials()
        frozen = credentials.get_frozen_credentials()

        class _Frozen(CredentialProvider):  # type: ignore[misc]
            METHOD = "kinesis-destination"

            def load(self) -> Any:
                return frozen

        token, expires_ms = MSKAuthTokenProvider.generate_auth_token_from_credentials_provider(
            self.region, _Frozen()
        )
        return str(token), int(expires_ms)

    def _load_credentials(self) -> Any:
        if self._credentials is not None:
            return self._credentials
        import botocore.session
        from botocore.credentials import (
            AssumeRoleCredentialFetcher,
            DeferredRefreshableCredentials,
        )

        session = botocore.session.Session()
        session.set_config_variable("region", self.region)  # regional STS for the role
        base = session.get_credentials()
        if base is None:
            raise RuntimeError(
                "no AWS credentials found (environment, AWS_PROFILE, web identity, "
                "container or instance role)"
            )
        if self.role_arn is None:
            self._credentials = base
        else:
            fetcher = AssumeRoleCredentialFetcher(
                client_creator=session.create_client,
                source_credentials=base,
                role_arn=self.role_arn,
                extra_args={"RoleSessionName": ROLE_SESSION_NAME},
            )
            self._credentials = DeferredRefreshableCredentials(
                refresh_using=fetcher.fetch_credentials, method="assume-role"
            )
        return self._credentials

    def __repr__(self) -> str:
        role = f", role {self.role_arn}" if self.role_arn else ""
        return f"<MskIamTokenProvider region {self.region}{role}>"
