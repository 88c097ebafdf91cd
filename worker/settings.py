"""The worker's configuration: one typed, validated settings object.

Sources, later ones winning: the YAML file of CONTRACT section 6, then
environment variables named ``KD_`` + the key path in capitals joined by
``__``, list items by index: ``KD_KAFKA__BOOTSTRAP_SERVERS``,
``KD_DESTINATIONS__0__STREAM``, ``KD_DESTINATIONS__0__AUTH__SECRET_ACCESS_KEY``.
Values from the environment are parsed as YAML scalars or flow lists
(``KD_DESTINATIONS__0__PARTITION_KEY_NAMESPACES='[ecid, email]'``).

pydantic-settings' own environment source cannot address list items by index,
and destinations are a list; so the two sources are merged here and the result
validated by pydantic. docs/configuration.md lists every key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from worker.kinesis import TransportConfig

ENV_PREFIX = "KD_"
# Patterns are applied with fullmatch: with match, "$" also matches before a
# final newline, so "a.b\n" would pass. Digits are [0-9]: \d takes any
# Unicode digit.
_XDM_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*")
_AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
_IAM_ROLE_ARN = re.compile(r"arn:aws[a-z\-]*:iam::[0-9]{12}:role/.+")
# Kafka's own rule for topic names ("." and ".." are refused apart).
_KAFKA_TOPIC = re.compile(r"[a-zA-Z0-9._\-]{1,249}")
# A DNS host name as botocore takes it for an endpoint (labels of letters,
# digits and inner hyphens, an optional final dot); Kafka hosts may also hold
# "_" (Docker Compose service names).
_HOST_NAME = re.compile(
    r"([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.?"
)
_KAFKA_HOST_NAME = re.compile(
    r"([A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?\.?"
)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


def _problem(message: str) -> PydanticCustomError:
    # The message is shown after the key's path, as "kafka.sasl_password: <message>".
    return PydanticCustomError("invalid_setting", message)


def _has_space_or_control(text: str) -> bool:
    return any(char.isspace() or not char.isprintable() for char in text)


def _host_port_problem(text: str, *, port_required: bool, host_name: re.Pattern[str]) -> str | None:
    """What is wrong with ``host[:port]`` or ``[ipv6][:port]``; None if nothing."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return "the IPv6 host has no closing bracket"
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"host [{host}] in brackets is not an IPv6 address"
        if rest and not rest.startswith(":"):
            return f"unexpected {rest!r} after the host [{host}]"
        port = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            return "write an IPv6 host in brackets, as [::1]:9092"
        host, colon, port_text = text.partition(":")
        port = port_text if colon else None
        if not host:
            return "no host"
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                return f"host {host!r} is not an IPv4 address"
        elif len(host.rstrip(".")) > 253 or not host_name.fullmatch(host):
            return f"host {host!r} is not a host name"
    if port is None:
        return "no port: write host:port" if port_required else None
    if not port:
        return "empty port"
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a number from 1 to 65535"
    return None


def _url_problem(url: str) -> str | None:
    """What is wrong with an http(s) endpoint URL; None if nothing. Never quotes the URL."""
    if _has_space_or_control(url):
        return "whitespace or control characters in the URL"
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in ("http", "https"):
        return "not an http:// or https:// URL"
    if "?" in rest:
        return "a query (?...) is not allowed in an endpoint URL"
    if "#" in rest:
        return "a fragment (#...) is not allowed in an endpoint URL"
    authority = rest.partition("/")[0]
    if "@" in authority:
        return "credentials in the URL are not allowed; use auth"
    if not authority:
        return "no host: write http://host[:port]"
    return _host_port_problem(authority, port_required=False, host_name=_HOST_NAME)


class _Strict(BaseModel):
    # Unknown keys are configuration mistakes: refuse them, naming the key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentSettings(_Strict):
    id: str = Field(min_length=1)
    name: str | None = None
    created_at: int | None = Field(default=None, ge=0)
    updated_at: int | None = Field(default=None, ge=0)
    mapping_created_at: int | None = Field(default=None, ge=0)
    mapping_updated_at: int | None = Field(default=None, ge=0)


class AuthSettings(_Strict):
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


def _no_repeats(values: list[str], message: str) -> None:
    if len(set(values)) != len(values):
        raise ValueError(message)


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


class DestinationSettings(_Strict):
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
    # Write limits per shard (provisioned streams: 1,000 records/s, 1 MiB/s);
    # 0 turns a limit off, e.g. for on-demand streams.
    shard_records_per_s: int = Field(default=1000, ge=0)
    shard_bytes_per_s: int = Field(default=1024 * 1024, ge=0)
    # PutRecords calls in flight at once to this stream.
    max_in_flight: int = Field(default=8, ge=1, le=256)

    def transport(self) -> TransportConfig:
        """Where and as whom the delivery package calls this destination's stream."""
        from worker.kinesis import TransportConfig  # here: loading settings stays light

        auth = self.auth or AuthSettings()
        return TransportConfig(
            region=self.region,
            endpoint_url=self.endpoint_url,
            access_key_id=auth.access_key_id,
            secret_access_key=_secret(auth.secret_access_key),
            session_token=_secret(auth.session_token),
            role_arn=auth.role_arn,
            external_id=auth.external_id,
        )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_an_http_url(cls, value: str | None) -> str | None:
        problem = None if value is None else _url_problem(value)
        if problem is not None:
            raise _problem(problem)
        return value

    @field_validator("partition_key_namespaces")
    @classmethod
    def _namespaces_are_distinct_names(cls, value: list[str]) -> list[str]:
        for namespace in value:
            if not namespace.strip():
                raise ValueError("namespaces must be non-empty names")
        _no_repeats(value, "namespaces must not repeat")
        return value

    @field_validator("segments")
    @classmethod
    def _segments_are_distinct(cls, value: list[SegmentSettings]) -> list[SegmentSettings]:
        _no_repeats([segment.id for segment in value], "a segment id is mapped twice")
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes_are_xdm_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not _XDM_PATH.fullmatch(path):
                raise ValueError(f"{path!r} is not a dotted XDM path such as person.name.lastName")
            if path.split(".")[0] in ("segmentMembership", "identityMap"):
                raise ValueError(f"{path!r} clashes with a field the record always has")
        _no_repeats(value, "an attribute is selected twice")
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


class KafkaSettings(_Strict):
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
            raise _problem("no server: write host:port, several separated by commas")
        for server in servers:
            if not server:
                raise _problem("an empty server between commas")
            if _has_space_or_control(server):
                raise _problem(f"whitespace or control characters in {server!r}")
            if "://" in server:
                raise _problem(f"{server!r}: write host:port, not a URL")
            problem = _host_port_problem(server, port_required=True, host_name=_KAFKA_HOST_NAME)
            if problem is not None:
                raise _problem(f"{server!r}: {problem}")
        return ",".join(servers)

    @field_validator(*_TOPIC_KEYS)
    @classmethod
    def _topics_are_legal_and_distinct(cls, value: str, info: ValidationInfo) -> str:
        if value in (".", ".."):
            raise _problem(f"{value!r} is not a legal Kafka topic name")
        if not _KAFKA_TOPIC.fullmatch(value):
            raise _problem(
                "a Kafka topic name is 1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-'"
            )
        for other in _TOPIC_KEYS[: _TOPIC_KEYS.index(str(info.field_name))]:
            theirs = info.data.get(other)
            if theirs is None:
                continue  # invalid, reported on its own key
            if theirs == value:
                raise _problem(
                    f"the same topic as kafka.{other}; the qualifications, profiles and "
                    "dead-letter topics must be three different topics"
                )
            if theirs.replace(".", "_") == value.replace(".", "_"):
                raise _problem(
                    f"{value!r} and kafka.{other} ({theirs!r}) collide: Kafka treats '.' "
                    "and '_' in topic names alike and refuses the second one"
                )
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
            raise _problem(f"required when security_protocol is {protocol}")
        if protocol not in _SASL_PROTOCOLS and value is not None:
            raise _problem(
                f"only used with security_protocol SASL_PLAINTEXT or SASL_SSL "
                f"(security_protocol is {protocol})"
            )
        if value == "AWS_MSK_IAM" and protocol != "SASL_SSL":
            raise _problem("AWS_MSK_IAM needs security_protocol SASL_SSL (MSK serves IAM on TLS)")
        return value

    @field_validator("sasl_username", "sasl_password")
    @classmethod
    def _credentials_fit_mechanism(cls, value: Any, info: ValidationInfo) -> Any:
        if "security_protocol" not in info.data or "sasl_mechanism" not in info.data:
            return value  # reported on those keys
        mechanism = info.data["sasl_mechanism"]
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and value is None:
            raise _problem(f"required with sasl_mechanism {mechanism}")
        if mechanism == "AWS_MSK_IAM" and value is not None:
            raise _problem("not used with sasl_mechanism AWS_MSK_IAM (AWS credentials sign in)")
        if mechanism is None and value is not None:
            raise _problem("only used with security_protocol SASL_PLAINTEXT or SASL_SSL")
        return value

    @field_validator("aws_region")
    @classmethod
    def _region_for_iam(cls, value: str | None, info: ValidationInfo) -> str | None:
        mechanism = info.data.get("sasl_mechanism")
        if "sasl_mechanism" not in info.data:
            return value
        if mechanism == "AWS_MSK_IAM" and value is None:
            raise _problem("required with sasl_mechanism AWS_MSK_IAM: the MSK cluster's region")
        if mechanism != "AWS_MSK_IAM" and value is not None:
            raise _problem("only used with sasl_mechanism AWS_MSK_IAM")
        if value is not None and not _AWS_REGION.fullmatch(value):
            raise _problem(f"{value!r} is not an AWS region name such as us-east-1")
        return value

    @field_validator("aws_role_arn")
    @classmethod
    def _role_for_iam(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "sasl_mechanism" in info.data and info.data["sasl_mechanism"] != "AWS_MSK_IAM":
            raise _problem("only used with sasl_mechanism AWS_MSK_IAM")
        if value is not None and not _IAM_ROLE_ARN.fullmatch(value):
            raise _problem("not an IAM role ARN such as arn:aws:iam::123456789012:role/name")
        return value

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _readable_file_with_tls(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return value
        protocol = info.data.get("security_protocol")
        if protocol is not None and protocol not in _TLS_PROTOCOLS:
            raise _problem(
                "only used with security_protocol SSL or SASL_SSL "
                f"(security_protocol is {protocol})"
            )
        if not value.is_file():
            raise _problem(f"no such file: {value}")
        try:
            with value.open("rb"):
                pass
        except OSError as exc:
            raise _problem(f"cannot read {value}: {exc.strerror}") from None
        return value

    @field_validator("ssl_keyfile", "ssl_key_password")
    @classmethod
    def _needs_certificate(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and "ssl_certfile" in info.data and info.data["ssl_certfile"] is None:
            raise _problem(_NEEDS_CERTIFICATE[info.field_name or ""])
        return value


class RuntimeSettings(_Strict):
    """How the worker runs; not part of the destination's definition."""

    store: Literal["memory://", "rocksdb://"] = "memory://"
    web_port: int = Field(default=6066, ge=1, le=65535)
    web_host: str = "0.0.0.0"
    data_dir: Path = Path("kd-data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Events taken from Kafka per batch, and the longest wait to fill one.
    batch_max_events: int = Field(default=2000, ge=1, le=100_000)
    batch_linger_ms: int = Field(default=100, ge=1, le=60_000)
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


class Settings(_Strict):
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

    def mapped_segments(self) -> frozenset[str]:
        return frozenset(s.id for d in self.destinations for s in d.segments)


def load_settings(
    path: Path | str | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Reads, merges and validates the configuration; raises ConfigError naming the key."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded, duplicates = _load_yaml(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"configuration file {path} is not UTF-8 text") from None
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"configuration file {path} is not valid YAML: {_yaml_problem(exc)}"
            ) from None
        if duplicates:
            raise ConfigError(
                "invalid configuration:\n  "
                + "\n  ".join(
                    f"{key}: set twice in {path}, at lines {first} and {second}"
                    for key, first, second in duplicates
                )
            )
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {path} must hold a mapping at the top level")
        data = loaded or {}
    for keys, value in _environment_overrides(os.environ if environ is None else environ):
        _set_path(data, keys, value)
    for dotted, override in (overrides or {}).items():
        if override is not None:
            _set_path(data, dotted.split("."), override)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _load_yaml(text: str) -> tuple[Any, list[tuple[str, int, int]]]:
    """Parses one YAML document (safely), and finds the keys set twice in a mapping.

    PyYAML keeps the last value of a repeated key without a word. Returns the
    data and, for each repeat, its key path and the lines of the first and the
    repeated key. Keys merged in with "<<" are defaults, not repeats.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, []
        duplicates: list[tuple[str, int, int]] = []
        walked: set[int] = set()

        def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
            if id(node) in walked:  # an alias of a node walked already
                return
            walked.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                for index, item in enumerate(node.value):
                    walk(item, (*path, str(index)))
            elif isinstance(node, yaml.MappingNode):
                first_lines: dict[Any, int] = {}
                for key_node, value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        walk(value_node, path)
                        continue
                    key = str(key_node.value)
                    if isinstance(key_node, yaml.ScalarNode):
                        # Compared as constructed: "true" and "True" are one key.
                        constructed = loader.construct_object(key_node)
                        key = str(constructed)
                        line = key_node.start_mark.line + 1
                        if constructed in first_lines:
                            duplicates.append(
                                (".".join((*path, key)), first_lines[constructed], line)
                            )
                        else:
                            first_lines[constructed] = line
                    walk(value_node, (*path, key))

        walk(root, ())
        return loader.construct_document(root), duplicates
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # PyYAML's own text quotes the offending line, which may hold a secret.
    if isinstance(exc, yaml.MarkedYAMLError):
        where = []
        for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
            if text and mark is not None:
                where.append(f"{text} at line {mark.line + 1}, column {mark.column + 1}")
            elif text:
                where.append(text)
        return "; ".join(where) or "syntax error"
    return "syntax error"


def _environment_overrides(environ: Mapping[str, str]) -> list[tuple[list[str], Any]]:
    found = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        value: Any = raw
        # Lists and mappings are written as YAML flow collections; every other
        # value stays a string (pydantic converts numbers and booleans) so that
        # "Top #1" or "Sales: EMEA" are not mangled by YAML.
        if raw[:1] in ("[", "{"):
            try:
                value, duplicates = _load_yaml(raw)
            except yaml.YAMLError:
                raise ConfigError(f"{name}: not a valid YAML list or mapping") from None
            if duplicates:
                raise ConfigError(f"{name}: {duplicates[0][0]} is set twice")
        found.append((keys, value))
    # List items must be applied by ascending index: 2 before 10.
    found.sort(key=lambda item: [(0, int(k), "") if k.isdigit() else (1, 0, k) for k in item[0]])
    return found


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    where: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(where, list):
            if not key.isdigit():
                raise ConfigError(f"{'.'.join(keys)}: {key!r} must be a list index")
            index = int(key)
            if index > len(where):
                raise ConfigError(f"{'.'.join(keys)}: index {index} skips list items")
            if index == len(where):
                where.append(value if last else {})
            elif last:
                where[index] = value
            elif not isinstance(where[index], dict | list):
                where[index] = [] if keys[depth + 1].isdigit() else {}
            where = where[index]
        else:
            if last:
                where[key] = value
            else:
                child = where.get(key)
                if not isinstance(child, dict | list):
                    child = [] if keys[depth + 1].isdigit() else {}
                    where[key] = child
                where = child


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{key}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
