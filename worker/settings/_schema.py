"""The settings models: every key, its type, its default and its checks.

docs/configuration.md lists them for people; config/example.yaml shows them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import (
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.settings._checks import (
    AWS_REGION,
    IAM_ROLE_ARN,
    KAFKA_HOST_NAME,
    KAFKA_TOPIC,
    XDM_PATH,
    Strict,
    has_space_or_control,
    host_port_problem,
    invalid,
    no_repeats,
    secret,
    url_problem,
)

if TYPE_CHECKING:
    from worker.kinesis import TransportConfig


class SegmentSettings(Strict):
    id: str = Field(min_length=1)
    name: str | None = None
    created_at: int | None = Field(default=None, ge=0)
    updated_at: int | None = Field(default=None, ge=0)
    mapping_created_at: int | None = Field(default=None, ge=0)
    mapping_updated_at: int | None = Field(default=None, ge=0)


class AuthSettings(Strict):
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    role_arn: str | None = None
    external_id: str | None = None

    @model_validator(mode="after")
    def _keys_come_in_pairs(self) -> Self:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            missing = "secret_access_key" if self.secret_access_key is None else "access_key_id"
            raise ValueError(f"{missing} is required when the other access key field is set")
        if self.external_id is not None and self.role_arn is None:
            raise ValueError("external_id needs role_arn")
        return self


class DestinationSettings(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    stream: str = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_.\-]+$")
    region: str = Field(min_length=1, pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
    endpoint_url: str | None = None
    auth: AuthSettings | None = None
    include_segment_names: bool = False
    include_segment_timestamps: bool = False
    partition_key_namespaces: list[str] = Field(default_factory=list)
    segments: list[SegmentSettings] = Field(min_length=1)
    attributes: list[str] = Field(default_factory=list)
    # The share of the stream's records/s limit (per shard, times the shards)
    # that backfill and re-send may use, so that live records keep flowing.
    backfill_share: float = Field(default=0.5, gt=0, le=1)
    # Write limits per shard (provisioned streams: 1,000 records/s, 1 MiB/s);
    # 0 turns a limit off, e.g. for on-demand streams.
    shard_records_per_s: int = Field(default=1000, ge=0)
    shard_bytes_per_s: int = Field(default=1024 * 1024, ge=0)
    # PutRecords calls in flight at once to this stream.
    max_in_flight: int = Field(default=8, ge=1, le=256)
    # A stream that has accepted none of a batch's records for this long (at
    # once when it refuses writes: stream missing, access denied, KMS) gets its
    # records parked in Kafka, so that the other destinations go on
    # (worker.parking).
    park_after_s: float = Field(default=30.0, ge=0, le=3600)
    # While parked, the stream is tried again this often (with parked records).
    park_probe_s: float = Field(default=10.0, gt=0, le=3600)

    def transport(self) -> TransportConfig:
        """Where and as whom the delivery package calls this destination's stream."""
        from worker.kinesis import TransportConfig  # here: loading settings stays light

        auth = self.auth or AuthSettings()
        return TransportConfig(
            region=self.region,
            endpoint_url=self.endpoint_url,
            access_key_id=auth.access_key_id,
            secret_access_key=secret(auth.secret_access_key),
            session_token=secret(auth.session_token),
            role_arn=auth.role_arn,
            external_id=auth.external_id,
        )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_an_http_url(cls, value: str | None) -> str | None:
        problem = None if value is None else url_problem(value)
        if problem is not None:
            raise invalid(problem)
        return value

    @field_validator("partition_key_namespaces")
    @classmethod
    def _namespaces_are_distinct_names(cls, value: list[str]) -> list[str]:
        for namespace in value:
            if not namespace.strip():
                raise ValueError("namespaces must be non-empty names")
        no_repeats(value, "namespaces must not repeat")
        return value

    @field_validator("segments")
    @classmethod
    def _segments_are_distinct(cls, value: list[SegmentSettings]) -> list[SegmentSettings]:
        no_repeats([segment.id for segment in value], "a segment id is mapped twice")
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes_are_xdm_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not XDM_PATH.fullmatch(path):
                raise ValueError(f"{path!r} is not a dotted XDM path such as person.name.lastName")
            if path.split(".")[0] in ("segmentMembership", "identityMap"):
                raise ValueError(f"{path!r} clashes with a field the record always has")
        no_repeats(value, "an attribute is selected twice")
        return value


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM"]
_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS_PROTOCOLS = ("SSL", "SASL_SSL")
_TOPIC_KEYS = ("qualifications_topic", "profiles_topic", "dlq_topic")


_NEEDS_CERTIFICATE = {
    "ssl_keyfile": "needs ssl_certfile, the client certificate of this key",
    "ssl_key_password": "needs ssl_certfile (and ssl_keyfile when the key is apart)",
}


class KafkaSettings(Strict):
    """Where Kafka is and how to connect to it (docs/configuration.md, section kafka).

    The security keys are checked against each other here, each error on the
    key to change; fields are validated in declaration order, so each validator
    sees the keys above it in ``info.data`` (absent when they were invalid).
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    # Three distinct topics; each checked against the ones above it.
    qualifications_topic: str = Field(default="segment-qualifications", validate_default=True)
    profiles_topic: str = Field(default="profile-updates", validate_default=True)
    dlq_topic: str = Field(default="kinesis-destination-dlq", validate_default=True)
    # Where `resend` sends its requests to the workers; "<app_id>-control" when
    # unset. Created by the worker with the input topics' partition count.
    control_topic: str | None = None
    # Replicas of the topics the worker creates (dead letters, table changelogs);
    # 1 suits a single local broker, production clusters want 3.
    replication_factor: int = Field(default=1, ge=1, le=32)
    # Security: how the worker connects and authenticates to the brokers.
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = Field(default=None, validate_default=True)
    sasl_username: str | None = Field(default=None, min_length=1, validate_default=True)
    sasl_password: SecretStr | None = Field(default=None, validate_default=True)
    # AWS_MSK_IAM: the cluster's region; the role to assume, else the default chain.
    aws_region: str | None = Field(default=None, validate_default=True)
    aws_role_arn: str | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers_are_host_ports(cls, value: str) -> str:
        # Spaces around the commas are dropped: Faust would pass them on to aiokafka.
        servers = [server.strip(" ") for server in value.split(",")]
        if servers == [""]:
            raise invalid("no server: write host:port, several separated by commas")
        for server in servers:
            if not server:
                raise invalid("an empty server between commas")
            if has_space_or_control(server):
                raise invalid(f"whitespace or control characters in {server!r}")
            if "://" in server:
                raise invalid(f"{server!r}: write host:port, not a URL")
            problem = host_port_problem(server, port_required=True, host_name=KAFKA_HOST_NAME)
            if problem is not None:
                raise invalid(f"{server!r}: {problem}")
        return ",".join(servers)

    @field_validator(*_TOPIC_KEYS)
    @classmethod
    def _topics_are_legal_and_distinct(cls, value: str, info: ValidationInfo) -> str:
        if value in (".", ".."):
            raise invalid(f"{value!r} is not a legal Kafka topic name")
        if not KAFKA_TOPIC.fullmatch(value):
            raise invalid(
                "a Kafka topic name is 1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-'"
            )
        for other in _TOPIC_KEYS[: _TOPIC_KEYS.index(str(info.field_name))]:
            theirs = info.data.get(other)
            if theirs is None:
                continue  # invalid, reported on its own key
            if theirs == value:
                raise invalid(
                    f"the same topic as kafka.{other}; the qualifications, profiles and "
                    "dead-letter topics must be three different topics"
                )
            if theirs.replace(".", "_") == value.replace(".", "_"):
                raise invalid(
                    f"{value!r} and kafka.{other} ({theirs!r}) collide: Kafka treats '.' "
                    "and '_' in topic names alike and refuses the second one"
                )
        return value

    @field_validator("control_topic")
    @classmethod
    def _control_topic_is_legal(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if value in (".", "..") or not KAFKA_TOPIC.fullmatch(value):
            raise invalid(
                "a Kafka topic name is 1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-'"
            )
        for other in _TOPIC_KEYS:
            theirs = info.data.get(other)
            if theirs is not None and theirs.replace(".", "_") == value.replace(".", "_"):
                raise invalid(f"the same topic as kafka.{other}; the control topic is its own")
        return value

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("sasl_mechanism")
    @classmethod
    def _mechanism_fits_protocol(
        cls, value: SaslMechanism | None, info: ValidationInfo
    ) -> SaslMechanism | None:
        protocol = info.data.get("security_protocol")
        if protocol is None:
            return value
        if protocol in _SASL_PROTOCOLS and value is None:
            raise invalid(f"required when security_protocol is {protocol}")
        if protocol not in _SASL_PROTOCOLS and value is not None:
            raise invalid(
                f"only used with security_protocol SASL_PLAINTEXT or SASL_SSL "
                f"(security_protocol is {protocol})"
            )
        if value == "AWS_MSK_IAM" and protocol != "SASL_SSL":
            raise invalid("AWS_MSK_IAM needs security_protocol SASL_SSL (MSK serves IAM on TLS)")
        return value

    @field_validator("sasl_username", "sasl_password")
    @classmethod
    def _credentials_fit_mechanism(cls, value: Any, info: ValidationInfo) -> Any:
        if "security_protocol" not in info.data or "sasl_mechanism" not in info.data:
            return value  # reported on those keys
        mechanism = info.data["sasl_mechanism"]
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and value is None:
            raise invalid(f"required with sasl_mechanism {mechanism}")
        if mechanism == "AWS_MSK_IAM" and value is not None:
            raise invalid("not used with sasl_mechanism AWS_MSK_IAM (AWS credentials sign in)")
        if mechanism is None and value is not None:
            raise invalid("only used with security_protocol SASL_PLAINTEXT or SASL_SSL")
        return value

    @field_validator("aws_region")
    @classmethod
    def _region_for_iam(cls, value: str | None, info: ValidationInfo) -> str | None:
        mechanism = info.data.get("sasl_mechanism")
        if "sasl_mechanism" not in info.data:
            return value
        if mechanism == "AWS_MSK_IAM" and value is None:
            raise invalid("required with sasl_mechanism AWS_MSK_IAM: the MSK cluster's region")
        if mechanism != "AWS_MSK_IAM" and value is not None:
            raise invalid("only used with sasl_mechanism AWS_MSK_IAM")
        if value is not None and not AWS_REGION.fullmatch(value):
            raise invalid(f"{value!r} is not an AWS region name such as us-east-1")
        return value

    @field_validator("aws_role_arn")
    @classmethod
    def _role_for_iam(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "sasl_mechanism" in info.data and info.data["sasl_mechanism"] != "AWS_MSK_IAM":
            raise invalid("only used with sasl_mechanism AWS_MSK_IAM")
        if value is not None and not IAM_ROLE_ARN.fullmatch(value):
            raise invalid("not an IAM role ARN such as arn:aws:iam::123456789012:role/name")
        return value

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _readable_file_with_tls(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return value
        protocol = info.data.get("security_protocol")
        if protocol is not None and protocol not in _TLS_PROTOCOLS:
            raise invalid(
                "only used with security_protocol SSL or SASL_SSL "
                f"(security_protocol is {protocol})"
            )
        if not value.is_file():
            raise invalid(f"no such file: {value}")
        try:
            with value.open("rb"):
                pass
        except OSError as exc:
            raise invalid(f"cannot read {value}: {exc.strerror}") from None
        return value

    @field_validator("ssl_keyfile", "ssl_key_password")
    @classmethod
    def _needs_certificate(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and "ssl_certfile" in info.data and info.data["ssl_certfile"] is None:
            raise invalid(_NEEDS_CERTIFICATE[info.field_name or ""])
        return value


class RuntimeSettings(Strict):
    """How the worker runs; not part of the destination's definition."""

    store: Literal["memory://", "rocksdb://"] = "memory://"
    web_port: int = Field(default=6066, ge=1, le=65535)
    web_host: str = "0.0.0.0"
    data_dir: Path = Path("kd-data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Events taken from Kafka per batch, and the longest wait to fill one.
    batch_max_events: int = Field(default=2000, ge=1, le=100_000)
    batch_linger_ms: int = Field(default=50, ge=1, le=60_000)
    # Everything the worker holds. Half: input events taken from Kafka and not
    # yet done (full, the worker stops reading). Half: records built and not
    # yet accepted, dead letters not yet written (full, the batch delivers
    # what it has built before going on).
    max_buffer_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Faust commits acknowledged offsets this often.
    commit_interval_ms: int = Field(default=1000, ge=10)
    # On SIGTERM, batches already taken get this long to finish before the
    # worker leaves the group (what is left is replayed, never lost).
    shutdown_timeout_s: float = Field(default=20.0, ge=0, le=600)
    # /healthz fails when events have waited this long with no batch completed
    # (Kafka refusing writes, Kinesis refusing a stream, or a bug).
    stall_timeout_s: float = Field(default=600.0, ge=10)
    # A worker that stops heart-beating for this long loses its partitions.
    session_timeout_ms: int = Field(default=45_000, ge=6_000, le=300_000)
    # Other workers keep a warm copy of each table partition (Faust standby
    # replicas), so a moved partition resumes without reading its whole changelog.
    standby_replicas: int = Field(default=1, ge=0, le=8)
    # Kafka static membership (group.instance.id, KIP-345): a stable id per
    # worker (the pod name of a StatefulSet). A restarted worker with the same
    # id gets its partitions back at once, without a rebalance of the others;
    # a worker that stops for good keeps its partitions until the session
    # timeout. None: dynamic membership.
    instance_id: str | None = Field(
        default=None, min_length=1, max_length=249, pattern=r"^[a-zA-Z0-9._\-]+$"
    )


class Settings(Strict):
    app_id: str = Field(default="kinesis-destination", min_length=1, pattern=r"^[a-zA-Z0-9._\-]+$")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    destinations: list[DestinationSettings] = Field(min_length=1)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)

    @field_validator("destinations")
    @classmethod
    def _destination_names_are_distinct(
        cls, value: list[DestinationSettings]
    ) -> list[DestinationSettings]:
        names = [destination.name for destination in value]
        if len(set(names)) != len(names):
            raise ValueError("destination names must be distinct")
        return value

    @property
    def control_topic(self) -> str:
        """The control topic's name (kafka.control_topic, else "<app_id>-control")."""
        return self.kafka.control_topic or f"{self.app_id}-control"

    def parking_topic(self, destination: str) -> str:
        """Where a destination's records wait while its stream refuses them
        (worker.parking): ``<app_id>-parked-<destination>``, a prefix no other
        topic of the worker has (its tables' changelogs end in ``-changelog``).
        A name with characters a topic name cannot hold, or too long for one,
        gets them as ``_`` (cut) and a hash of the name, so that two names
        never share a topic."""
        safe = re.sub(r"[^a-zA-Z0-9._-]", "_", destination)
        topic = f"{self.app_id}-parked-{safe}"
        if safe != destination or len(topic) > 249:
            digest = hashlib.sha256(destination.encode()).hexdigest()[:8]
            topic = f"{topic[:240]}-{digest}"
        return topic

    @model_validator(mode="after")
    def _control_topic_is_its_own(self) -> Self:
        kafka = self.kafka
        for key in _TOPIC_KEYS:
            if getattr(kafka, key).replace(".", "_") == self.control_topic.replace(".", "_"):
                raise invalid(
                    f"app_id: the control topic it names, {self.control_topic!r}, is "
                    f"kafka.{key}; set kafka.control_topic to a topic of its own"
                )
        return self

    def mapped_segments(self) -> frozenset[str]:
        return frozenset(s.id for d in self.destinations for s in d.segments)
