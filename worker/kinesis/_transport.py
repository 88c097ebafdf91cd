"""The wire to Kinesis: a small protocol, one real implementation on aioboto3."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aioboto3
from aiobotocore.credentials import AioRefreshableCredentials
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

# Whole-call errors that no retry soon can fix: the stream or the permission is missing.
FATAL_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSNotFoundException",
    }
)


class TransportError(Exception):
    """A whole call failed. ``fatal`` means retrying soon will not help."""

    def __init__(self, code: str, message: str, *, fatal: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.fatal = fatal


@dataclass(frozen=True, slots=True)
class PutReply:
    """One entry of a PutRecords reply: error_code None means accepted."""

    error_code: str | None = None
    error_message: str | None = None
    shard_id: str | None = None
    sequence_number: str | None = None


@dataclass(frozen=True, slots=True)
class StreamSummary:
    status: str
    open_shards: int
    max_record_bytes: int


class Transport(Protocol):
    async def put_records(
        self, stream: str, records: Sequence[tuple[bytes, str]]
    ) -> list[PutReply]: ...

    async def describe_stream(self, stream: str) -> StreamSummary: ...

    async def list_shards(self, stream: str) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
# Lifetime asked of assumed-role credentials; botocore renews them 15 minutes
# before they expire.
ROLE_SESSION_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Where and as whom to call Kinesis.

    ``region``: the stream's AWS region. ``endpoint_url``: another endpoint
    than AWS's (a local one in tests), also used for STS; None for AWS.
    ``access_key_id``/``secret_access_key`` (and ``session_token``): static
    keys; None for the default credential chain. ``role_arn`` (and
    ``external_id``): a role assumed on top of those credentials, renewed
    before it expires.
    """

    region: str
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    role_arn: str | None = None
    external_id: str | None = None


class AioBotoTransport:
    """Kinesis over aioboto3; credentials from the configuration or the default chain."""

    def __init__(self, config: TransportConfig) -> None:
        self._config = config
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def _kinesis(self) -> Any:
        if self._client is None:
            config = Config(
                # One attempt per call: botocore's own retries ("max_attempts" counts
                # retries, not attempts) would resend behind the writer's back.
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=32,
                # The writer sends only records it checked (sizes, key length);
                # botocore's walk over every entry of every call is pure cost.
                parameter_validation=False,
            )
            self._client = await self._stack.enter_async_context(
                self._session().client(
                    "kinesis", endpoint_url=self._config.endpoint_url, config=config
                )
            )
        return self._client

    def _session(self) -> aioboto3.Session:
        """Static keys, the default credential chain, or an assumed role on top of either."""
        config = self._config
        region = config.region
        base_args: dict[str, Any] = {"region_name": region}
        if config.access_key_id is not None:
            base_args["aws_access_key_id"] = config.access_key_id
            base_args["aws_secret_access_key"] = config.secret_access_key
            if config.session_token is not None:
                base_args["aws_session_token"] = config.session_token
        base = aioboto3.Session(**base_args)
        if config.role_arn is None:
            return base
        role_arn, external_id = config.role_arn, config.external_id
        # STS of the same local endpoint in tests; the regional STS otherwise.
        sts_endpoint = config.endpoint_url

        async def assume_role() -> dict[str, str]:
            arguments: dict[str, Any] = {
                "RoleArn": role_arn,
                "RoleSessionName": "kinesis-destination",
                "DurationSeconds": ROLE_SESSION_SECONDS,
            }
            if external_id is not None:
                arguments["ExternalId"] = external_id
            async with base.client("sts", endpoint_url=sts_endpoint) as sts:
                reply = await sts.assume_role(**arguments)
            credentials = reply["Credentials"]
            log.info("assumed role %s until %s", role_arn, credentials["Expiration"])
            return {
                "access_key": credentials["AccessKeyId"],
                "secret_key": credentials["SecretAccessKey"],
                "token": credentials["SessionToken"],
                "expiry_time": credentials["Expiration"].isoformat(),
            }

        # Refreshed by botocore before they expire (15 minutes ahead), on use.
        botocore_session = get_session()
        botocore_session._credentials = _LazyRoleCredentials(assume_role)
        return aioboto3.Session(botocore_session=botocore_session, region_name=region)

    async def put_records(
        self, stream: str, records: Sequence[tuple[bytes, str]]
    ) -> list[PutReply]:
        client = await self._kinesis()
        try:
            reply = await client.put_records(
                StreamName=stream,
                Records=[{"Data": data, "PartitionKey": key} for data, key in records],
            )
        except ClientError as exc:
            raise _translate(exc) from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise TransportError(type(exc).__name__, str(exc), fatal=False) from exc
        return [
            PutReply(
                error_code=entry.get("ErrorCode"),
                error_message=entry.get("ErrorMessage"),
                shard_id=entry.get("ShardId"),
                sequence_number=entry.get("SequenceNumber"),
            )
            for entry in reply["Records"]
        ]

    async def describe_stream(self, stream: str) -> StreamSummary:
        client = await self._kinesis()
        try:
            reply = await client.describe_stream_summary(StreamName=stream)
        except ClientError as exc:
            raise _translate(exc) from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise TransportError(type(exc).__name__, str(exc), fatal=False) from exc
        summary = reply["StreamDescriptionSummary"]
        max_kib = summary.get("MaxRecordSizeInKiB")
        return StreamSummary(
            status=summary["StreamStatus"],
            open_shards=int(summary.get("OpenShardCount", 0)),
            max_record_bytes=int(max_kib) * 1024 if max_kib else DEFAULT_MAX_RECORD_BYTES,
        )

    async def list_shards(self, stream: str) -> list[dict[str, Any]]:
        client = await self._kinesis()
        shards: list[dict[str, Any]] = []
        arguments: dict[str, Any] = {"StreamName": stream}
        try:
            while True:
                reply = await client.list_shards(**arguments)
                shards.extend(reply["Shards"])
                token = reply.get("NextToken")
                if not token:
                    return shards
                arguments = {"NextToken": token}
        except ClientError as exc:
            raise _translate(exc) from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise TransportError(type(exc).__name__, str(exc), fatal=False) from exc

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None


class _LazyRoleCredentials(AioRefreshableCredentials):  # type: ignore[misc]
    """Role credentials fetched on first use, then refreshed before they expire."""

    def __init__(self, assume_role: Any) -> None:
        super().__init__(
            access_key="",
            secret_key="",
            token="",
            expiry_time=datetime.now(UTC),  # already due: the first use fetches
            refresh_using=assume_role,
            method="sts-assume-role",
        )


def _translate(exc: ClientError) -> TransportError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    fatal = code in FATAL_CODES or (400 <= status < 500 and code not in _TRANSIENT_4XX)
    return TransportError(code, str(error.get("Message", "")), fatal=fatal)


_TRANSIENT_4XX = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ResourceInUseException",  # the stream is updating (resharding)
    }
)
