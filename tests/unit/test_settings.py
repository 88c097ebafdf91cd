"""Configuration loading (CONTRACT sections 5 and 6): YAML, environment, overrides."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.settings import ConfigError, DestinationSettings, Settings, load_settings

# Verbatim from CONTRACT section 6.
CONTRACT_EXAMPLE = """\
app_id: kinesis-destination            # Kafka consumer group and state prefix
kafka:
  bootstrap_servers: 127.0.0.1:9092
  qualifications_topic: segment-qualifications
  profiles_topic: profile-updates
  dlq_topic: kinesis-destination-dlq
destinations:                          # one or more
  - name: High propensity to Kinesis
    description: Prospects likely to convert
    stream: aep-export                 # an existing stream
    region: us-east-1
    endpoint_url: http://127.0.0.1:4567   # optional: a local emulator
    auth:                              # optional: default AWS credential chain when absent
      access_key_id: AKIAEXAMPLE
      secret_access_key: example-secret
      # role_arn: arn:aws:iam::123456789012:role/kinesis-writer   # optional: assume this role
      # external_id: example-external-id
    include_segment_names: false
    include_segment_timestamps: false
    partition_key_namespaces: [ecid, email_lc_sha256]
    segments:
      - id: 7841ba61-23c1-4bb3-a495-00d3g5fe1e93
        name: High propensity to convert
        created_at: 1590000000000      # epoch ms, used by include_segment_timestamps
        updated_at: 1590000000000
        mapping_created_at: 1590000000000
        mapping_updated_at: 1590000000000
    attributes:                        # selected XDM paths
      - person.name.lastName
      - personalEmail.address
"""

SECRET = "S3CRET-do-not-leak-4242"
SEGMENT = "7841ba61-23c1-4bb3-a495-00d3g5fe1e93"


def minimal_destination(**overrides: Any) -> dict[str, Any]:
    destination: dict[str, Any] = {
        "name": "Main",
        "stream": "aep-export",
        "region": "us-east-1",
        "segments": [{"id": SEGMENT}],
    }
    destination.update(overrides)
    return destination


def write_config(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def write_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={} if environ is None else environ)
    return str(caught.value)


def config_file(
    tmp_path: Path,
    *,
    kafka: Mapping[str, Any] | None = None,
    runtime: Mapping[str, Any] | None = None,
    **destination: Any,
) -> Path:
    """A file with one destination, minimal_destination(**destination), and the
    ``kafka`` and ``runtime`` sections when given."""
    data: dict[str, Any] = {"destinations": [minimal_destination(**destination)]}
    if kafka is not None:
        data["kafka"] = dict(kafka)
    if runtime is not None:
        data["runtime"] = dict(runtime)
    return write_config(tmp_path, data)


def minimal(tmp_path: Path) -> Path:
    return config_file(tmp_path)


def load_minimal(
    tmp_path: Path, environ: dict[str, str], overrides: dict[str, Any] | None = None
) -> Settings:
    """The minimal file loaded with this environment (and command-line overrides)."""
    return load_settings(minimal(tmp_path), environ=environ, overrides=overrides)


# app_id, then kafka's bootstrap_servers, qualifications_topic, profiles_topic, dlq_topic.
DEFAULT_APP_AND_KAFKA = (
    "kinesis-destination",
    "127.0.0.1:9092",
    "segment-qualifications",
    "profile-updates",
    "kinesis-destination-dlq",
)


def app_and_kafka(settings: Settings) -> tuple[str, str, str, str, str]:
    kafka = settings.kafka
    return (
        settings.app_id,
        kafka.bootstrap_servers,
        kafka.qualifications_topic,
        kafka.profiles_topic,
        kafka.dlq_topic,
    )


def static_keys(destination: DestinationSettings) -> tuple[str | None, str | None]:
    """The destination's access key id and secret access key; its auth must be set."""
    auth = destination.auth
    assert auth is not None
    secret = auth.secret_access_key
    return auth.access_key_id, None if secret is None else secret.get_secret_value()


# -- the contract's example -----------------------------------------------------------


def test_contract_example_loads(tmp_path: Path) -> None:
    settings = load_settings(write_text(tmp_path, CONTRACT_EXAMPLE), environ={})
    assert app_and_kafka(settings) == DEFAULT_APP_AND_KAFKA
    [destination] = settings.destinations
    assert destination.name == "High propensity to Kinesis"
    assert destination.description == "Prospects likely to convert"
    assert destination.stream == "aep-export"
    assert destination.region == "us-east-1"
    assert destination.endpoint_url == "http://127.0.0.1:4567"
    assert static_keys(destination) == ("AKIAEXAMPLE", "example-secret")
    assert destination.auth is not None
    assert destination.auth.role_arn is None
    assert destination.include_segment_names is False
    assert destination.include_segment_timestamps is False
    assert destination.partition_key_namespaces == ["ecid", "email_lc_sha256"]
    [segment] = destination.segments
    assert segment.id == SEGMENT
    assert segment.name == "High propensity to convert"
    assert segment.created_at == segment.updated_at == 1590000000000
    assert segment.mapping_created_at == segment.mapping_updated_at == 1590000000000
    assert destination.attributes == ["person.name.lastName", "personalEmail.address"]
    assert settings.mapped_segments() == frozenset({SEGMENT})


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    settings = load_minimal(tmp_path, {})
    assert app_and_kafka(settings) == DEFAULT_APP_AND_KAFKA
    [destination] = settings.destinations
    assert destination.auth is None
    assert destination.endpoint_url is None
    assert destination.partition_key_namespaces == []
    assert destination.attributes == []
    assert settings.runtime.web_port == 6066


def test_role_with_external_id_is_accepted(tmp_path: Path) -> None:
    auth = {"role_arn": "arn:aws:iam::123456789012:role/kinesis-writer", "external_id": "x"}
    path = config_file(tmp_path, auth=auth)
    destination = load_settings(path, environ={}).destinations[0]
    assert destination.auth is not None
    assert destination.auth.external_id == "x"


def test_several_destinations_map_their_segments(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "destinations": [
                minimal_destination(name="One"),
                minimal_destination(name="Two", segments=[{"id": "other"}]),
            ]
        },
    )
    settings = load_settings(path, environ={})
    assert [d.name for d in settings.destinations] == ["One", "Two"]
    assert settings.mapped_segments() == frozenset({SEGMENT, "other"})


# -- mistakes: ConfigError naming the key ---------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        pytest.param(
            {"destinations": [minimal_destination()], "colour": "blue"},
            "colour",
            "unknown key",
            id="unknown-top-level",
        ),
        pytest.param(
            {"destinations": [minimal_destination()], "kafka": {"bootstrap": "x:1"}},
            "kafka.bootstrap",
            "unknown key",
            id="unknown-in-kafka",
        ),
        pytest.param(
            {"destinations": [minimal_destination(streem="x")]},
            "destinations.0.streem",
            "unknown key",
            id="unknown-in-destination",
        ),
        pytest.param(
            {"destinations": [minimal_destination(segments=[{"id": "a", "label": "x"}])]},
            "destinations.0.segments.0.label",
            "unknown key",
            id="unknown-in-segment",
        ),
        pytest.param(
            {"destinations": [{k: v for k, v in minimal_destination().items() if k != "stream"}]},
            "destinations.0.stream",
            "required key is missing",
            id="missing-stream",
        ),
        pytest.param({}, "destinations", "required key is missing", id="missing-destinations"),
        pytest.param({"destinations": []}, "destinations", "at least 1", id="empty-destinations"),
        pytest.param(
            {"destinations": [minimal_destination(segments=[])]},
            "destinations.0.segments",
            "at least 1",
            id="empty-segments",
        ),
        pytest.param(
            {"destinations": [minimal_destination(partition_key_namespaces=["ecid", ""])]},
            "destinations.0.partition_key_namespaces",
            "non-empty",
            id="empty-namespace",
        ),
        pytest.param(
            {"destinations": [minimal_destination(partition_key_namespaces=["ecid", "ecid"])]},
            "destinations.0.partition_key_namespaces",
            "repeat",
            id="repeated-namespace",
        ),
        pytest.param(
            {"destinations": [minimal_destination(segments=[{"id": "a"}, {"id": "a"}])]},
            "destinations.0.segments",
            "twice",
            id="repeated-segment",
        ),
        pytest.param(
            {"destinations": [minimal_destination(park_after_s=-1)]},
            "destinations.0.park_after_s",
            "greater than or equal to 0",
            id="parking-negative",
        ),
        pytest.param(
            {"destinations": [minimal_destination(park_probe_s=0)]},
            "destinations.0.park_probe_s",
            "greater than 0",
            id="probe-zero",
        ),
        pytest.param(
            {"destinations": [minimal_destination(attributes=["person..name"])]},
            "destinations.0.attributes",
            "XDM path",
            id="bad-attribute-path",
        ),
        pytest.param(
            {"destinations": [minimal_destination(attributes=[""])]},
            "destinations.0.attributes",
            "XDM path",
            id="empty-attribute-path",
        ),
        pytest.param(
            {"destinations": [minimal_destination(attributes=[".a"])]},
            "destinations.0.attributes",
            "XDM path",
            id="attribute-path-leading-dot",
        ),
        pytest.param(
            {"destinations": [minimal_destination(attributes=["a."])]},
            "destinations.0.attributes",
            "XDM path",
            id="attribute-path-trailing-dot",
        ),
        pytest.param(
            {"destinations": [minimal_destination(attributes=["."])]},
            "destinations.0.attributes",
            "XDM path",
            id="attribute-path-dot",
        ),
        pytest.param(
            {"destinations": [minimal_destination(attributes=["identityMap.ecid"])]},
            "destinations.0.attributes",
            "clashes",
            id="reserved-attribute-path",
        ),
        pytest.param(
            {"destinations": [minimal_destination(attributes=["a.b", "a.b"])]},
            "destinations.0.attributes",
            "twice",
            id="repeated-attribute",
        ),
        pytest.param(
            {"destinations": [minimal_destination(), minimal_destination()]},
            "destinations",
            "distinct",
            id="duplicate-destination-names",
        ),
        pytest.param(
            {"destinations": [minimal_destination(auth={"access_key_id": "AKIA"})]},
            "destinations.0.auth",
            "secret_access_key",
            id="access-key-without-secret",
        ),
        pytest.param(
            {"destinations": [minimal_destination(auth={"secret_access_key": SECRET})]},
            "destinations.0.auth",
            "access_key_id",
            id="secret-without-access-key",
        ),
        pytest.param(
            {"destinations": [minimal_destination(auth={"external_id": "x"})]},
            "destinations.0.auth",
            "role_arn",
            id="external-id-without-role",
        ),
        pytest.param(
            {"destinations": [minimal_destination(region="Mars")]},
            "destinations.0.region",
            "pattern",
            id="bad-region",
        ),
        pytest.param(
            {"destinations": [minimal_destination(endpoint_url="localhost:4567")]},
            "destinations.0.endpoint_url",
            "http",
            id="bad-endpoint",
        ),
        pytest.param(
            {"destinations": [minimal_destination()], "runtime": {"web_port": 70000}},
            "runtime.web_port",
            "65535",
            id="bad-port",
        ),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, data: dict[str, Any], key: str, words: str) -> None:
    message = load_error(write_config(tmp_path, data))
    assert f"{key}: " in message
    assert words in message


def test_every_mistake_is_listed(tmp_path: Path) -> None:
    data = {"destinations": [minimal_destination(streem="x", segments=[])], "colour": "blue"}
    message = load_error(write_config(tmp_path, data))
    assert "colour: unknown key" in message
    assert "destinations.0.streem: unknown key" in message
    assert "destinations.0.segments: " in message


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write_text(tmp_path, "destinations: [\n  - name: a\n")
    message = load_error(path)
    assert "not valid YAML" in message
    assert str(path) in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    message = load_error(path)
    assert "cannot read configuration file" in message
    assert str(path) in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "cannot read configuration file" in load_error(tmp_path)


def test_top_level_list(tmp_path: Path) -> None:
    path = write_config(tmp_path, [minimal_destination()])
    assert "mapping at the top level" in load_error(path)


def test_top_level_scalar(tmp_path: Path) -> None:
    path = write_text(tmp_path, "just a string\n")
    assert "mapping at the top level" in load_error(path)


def test_empty_file_needs_destinations(tmp_path: Path) -> None:
    path = write_text(tmp_path, "")
    assert "destinations: required key is missing" in load_error(path)


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes("description: Configura\u00e7\u00e3o\n".encode("latin-1"))
    assert str(path) in load_error(path)


# -- environment ------------------------------------------------------------------------


def test_environment_sets_a_destination_key(tmp_path: Path) -> None:
    settings = load_minimal(tmp_path, {"KD_DESTINATIONS__0__STREAM": "other"})
    assert settings.destinations[0].stream == "other"


def test_environment_sets_a_kafka_key(tmp_path: Path) -> None:
    settings = load_minimal(
        tmp_path, {"KD_KAFKA__BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092"}
    )
    assert settings.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.kafka.dlq_topic == "kinesis-destination-dlq"  # the rest untouched


def test_environment_sets_a_top_level_key(tmp_path: Path) -> None:
    settings = load_minimal(tmp_path, {"KD_APP_ID": "other-app"})
    assert settings.app_id == "other-app"


def test_environment_parses_flow_lists(tmp_path: Path) -> None:
    settings = load_minimal(
        tmp_path,
        {"KD_DESTINATIONS__0__PARTITION_KEY_NAMESPACES": "[a, b]"},
    )
    assert settings.destinations[0].partition_key_namespaces == ["a", "b"]


def test_environment_parses_booleans_and_numbers(tmp_path: Path) -> None:
    settings = load_minimal(
        tmp_path,
        {
            "KD_DESTINATIONS__0__INCLUDE_SEGMENT_NAMES": "true",
            "KD_RUNTIME__WEB_PORT": "7001",
        },
    )
    assert settings.destinations[0].include_segment_names is True
    assert settings.runtime.web_port == 7001


def test_environment_adds_a_key_to_a_yaml_destination(tmp_path: Path) -> None:
    path = config_file(tmp_path, description="kept")
    settings = load_settings(
        path,
        environ={
            "KD_DESTINATIONS__0__ENDPOINT_URL": "http://127.0.0.1:4567",
            "KD_DESTINATIONS__0__AUTH__ACCESS_KEY_ID": "AKIAENV",
            "KD_DESTINATIONS__0__AUTH__SECRET_ACCESS_KEY": SECRET,
        },
    )
    [destination] = settings.destinations
    assert destination.endpoint_url == "http://127.0.0.1:4567"
    assert destination.description == "kept"
    assert destination.stream == "aep-export"
    assert static_keys(destination) == ("AKIAENV", SECRET)


def test_environment_sets_a_list_item_key(tmp_path: Path) -> None:
    settings = load_minimal(tmp_path, {"KD_DESTINATIONS__0__SEGMENTS__0__NAME": "Renamed"})
    assert settings.destinations[0].segments[0].name == "Renamed"
    assert settings.destinations[0].segments[0].id == SEGMENT


def test_environment_appends_the_next_list_item(tmp_path: Path) -> None:
    settings = load_minimal(
        tmp_path,
        {
            "KD_DESTINATIONS__0__SEGMENTS__1__ID": "second",
            "KD_DESTINATIONS__1__NAME": "Two",
            "KD_DESTINATIONS__1__STREAM": "two",
            "KD_DESTINATIONS__1__REGION": "eu-west-1",
            "KD_DESTINATIONS__1__SEGMENTS": "[{id: s2}]",
        },
    )
    assert [s.id for s in settings.destinations[0].segments] == [SEGMENT, "second"]
    assert [d.name for d in settings.destinations] == ["Main", "Two"]
    assert settings.destinations[1].segments[0].id == "s2"


def test_environment_alone_is_a_configuration() -> None:
    settings = load_settings(
        None,
        environ={
            "KD_DESTINATIONS__0__NAME": "Env",
            "KD_DESTINATIONS__0__STREAM": "env-stream",
            "KD_DESTINATIONS__0__REGION": "us-east-1",
            "KD_DESTINATIONS__0__SEGMENTS__0__ID": "seg",
        },
    )
    assert settings.destinations[0].stream == "env-stream"


def test_environment_ignores_other_variables(tmp_path: Path) -> None:
    settings = load_minimal(tmp_path, {"HOME": "/root", "KD_": "x", "kd_app_id": "lower"})
    assert settings.app_id == "kinesis-destination"


def test_environment_index_skipping_an_item_is_an_error(tmp_path: Path) -> None:
    message = load_error(minimal(tmp_path), environ={"KD_DESTINATIONS__2__STREAM": "x"})
    assert "destinations.2.stream" in message
    assert "skips" in message


def test_environment_non_index_under_a_list_is_an_error(tmp_path: Path) -> None:
    message = load_error(minimal(tmp_path), environ={"KD_DESTINATIONS__FIRST__STREAM": "x"})
    assert "destinations.first.stream" in message
    assert "list index" in message


def test_environment_unknown_key_is_named(tmp_path: Path) -> None:
    message = load_error(minimal(tmp_path), environ={"KD_KAFKA__BOOTSTRAP": "x:1"})
    assert "kafka.bootstrap: unknown key" in message


def test_overrides_win_over_environment(tmp_path: Path) -> None:
    settings = load_minimal(
        tmp_path,
        {"KD_RUNTIME__WEB_PORT": "7001"},
        overrides={"runtime.web_port": 7002},
    )
    assert settings.runtime.web_port == 7002  # overrides (command line) come last


def test_environment_list_of_more_than_ten_items(tmp_path: Path) -> None:
    environ = {f"KD_DESTINATIONS__0__SEGMENTS__{i}__ID": f"seg-{i}" for i in range(1, 12)}
    settings = load_minimal(tmp_path, environ)
    assert [s.id for s in settings.destinations[0].segments] == [SEGMENT] + [
        f"seg-{i}" for i in range(1, 12)
    ]


def test_environment_key_under_a_scalar_list_item(tmp_path: Path) -> None:
    path = config_file(tmp_path, attributes=["a.b"])
    message = load_error(path, environ={"KD_DESTINATIONS__0__ATTRIBUTES__0__X": "1"})
    assert "destinations.0.attributes" in message


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("KD_DESTINATIONS__0__STREAM", "12345", "stream"),  # a valid stream name
        ("KD_DESTINATIONS__0__DESCRIPTION", "Top #1 prospects", "description"),
        ("KD_DESTINATIONS__0__NAME", "Sales: EMEA", "name"),
    ],
)
def test_environment_strings_are_kept_as_written(
    tmp_path: Path, variable: str, value: str, field: str
) -> None:
    settings = load_minimal(tmp_path, {variable: value})
    assert getattr(settings.destinations[0], field) == value


# -- overrides (command line) -------------------------------------------------------------


def test_overrides_set_dotted_keys(tmp_path: Path) -> None:
    settings = load_minimal(
        tmp_path,
        {},
        overrides={"runtime.web_port": 7000, "runtime.data_dir": "/tmp/kd-1"},
    )
    assert settings.runtime.web_port == 7000
    assert settings.runtime.data_dir == Path("/tmp/kd-1")


def test_override_none_keeps_the_file_value(tmp_path: Path) -> None:
    path = config_file(tmp_path, runtime={"web_port": 6100})
    settings = load_settings(path, environ={}, overrides={"runtime.web_port": None})
    assert settings.runtime.web_port == 6100


def test_override_out_of_range_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"runtime\.web_port"):
        load_minimal(tmp_path, {}, overrides={"runtime.web_port": 0})


# -- secrets ------------------------------------------------------------------------------


def with_secret(tmp_path: Path) -> Path:
    auth = {"access_key_id": "AKIAEXAMPLE", "secret_access_key": SECRET, "session_token": SECRET}
    return config_file(tmp_path, auth=auth)


def test_secrets_are_not_in_str_or_repr(tmp_path: Path) -> None:
    settings = load_settings(with_secret(tmp_path), environ={})
    auth = settings.destinations[0].auth
    assert auth is not None
    assert auth.secret_access_key is not None
    assert auth.secret_access_key.get_secret_value() == SECRET
    for text in (str(settings), repr(settings), str(auth), repr(auth), repr(settings.destinations)):
        assert SECRET not in text
    assert SECRET not in settings.model_dump_json()


def test_secret_from_environment_is_not_in_repr(tmp_path: Path) -> None:
    settings = load_minimal(
        tmp_path,
        {
            "KD_DESTINATIONS__0__AUTH__ACCESS_KEY_ID": "AKIAENV",
            "KD_DESTINATIONS__0__AUTH__SECRET_ACCESS_KEY": SECRET,
        },
    )
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param({"secret_access_key": SECRET}, id="secret-without-key-id"),
        pytest.param({"secret_access_key": SECRET, "access_key_id": 12}, id="bad-key-id"),
        pytest.param({"access_key_id": "AKIA", "secret_access_key": [SECRET]}, id="secret-list"),
        pytest.param({"access_key_id": "AKIA", "secret_acces_key": SECRET}, id="misspelt-key"),
        pytest.param(
            {"access_key_id": "AKIA", "secret_access_key": "x", "session_token": {"t": SECRET}},
            id="token-object",
        ),
        pytest.param(
            {"access_key_id": "AKIA", "secret_access_key": SECRET, "external_id": "e"},
            id="external-id-without-role",
        ),
    ],
)
def test_secrets_are_not_in_config_errors(tmp_path: Path, auth: dict[str, Any]) -> None:
    path = config_file(tmp_path, auth=auth)
    message = load_error(path)
    assert "destinations.0.auth" in message
    assert SECRET not in message


def test_secret_in_environment_is_not_in_config_errors(tmp_path: Path) -> None:
    message = load_error(
        minimal(tmp_path),
        environ={
            "KD_DESTINATIONS__0__AUTH__SECRET_ACCESS_KEY": SECRET,
            "KD_DESTINATIONS__0__STREAM": "bad stream name",
        },
    )
    assert "destinations.0.auth" in message
    assert "destinations.0.stream" in message
    assert SECRET not in message


def test_secret_under_a_bad_index_is_not_in_config_errors(tmp_path: Path) -> None:
    message = load_error(
        minimal(tmp_path), environ={"KD_DESTINATIONS__5__AUTH__SECRET_ACCESS_KEY": SECRET}
    )
    assert "skips" in message
    assert SECRET not in message


def test_secret_on_a_malformed_yaml_line_is_not_in_config_errors(tmp_path: Path) -> None:
    path = write_text(
        tmp_path,
        f"""\
        destinations:
          - name: a
            stream: s
            region: us-east-1
            auth:
              access_key_id: AKIAEXAMPLE
              secret_access_key: "{SECRET}
            segments: [{{id: x}}]
        """,
    )
    message = load_error(path)
    assert "not valid YAML" in message
    assert "line 7" in message  # where the mistake is is still said
    assert SECRET not in message


def test_settings_type_is_exported() -> None:
    assert Settings.model_config.get("extra") == "forbid"


def test_static_membership_instance_id_from_the_environment(tmp_path: Path) -> None:
    """The Kubernetes manifests set it to the pod name."""
    assert load_minimal(tmp_path, {}).runtime.instance_id is None
    settings = load_minimal(tmp_path, {"KD_RUNTIME__INSTANCE_ID": "kinesis-destination-0"})
    assert settings.runtime.instance_id == "kinesis-destination-0"


@pytest.mark.parametrize("value", ["", "has space", "a/b", "x" * 250])
def test_a_bad_instance_id_is_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    path = config_file(tmp_path, runtime={"instance_id": value})
    assert "runtime.instance_id" in load_error(path)


# -- configuration traps: refused at load, naming the key, never a traceback --------------


def destination_error(tmp_path: Path, **overrides: Any) -> str:
    return load_error(config_file(tmp_path, **overrides))


def kafka_error(tmp_path: Path, **kafka: Any) -> str:
    return load_error(config_file(tmp_path, kafka=kafka))


@pytest.mark.parametrize(
    ("url", "words"),
    [
        pytest.param("http://", "no host", id="no-host"),
        pytest.param("https:///path", "no host", id="empty-host"),
        pytest.param("http://local host:4567", "whitespace", id="space-in-host"),
        pytest.param("http://127.0.0.1:4567 ", "whitespace", id="trailing-space"),
        pytest.param("http://127.0.0.1:4567\n", "whitespace", id="trailing-newline"),
        pytest.param("http://127.0.0.1:notaport", "port", id="port-not-a-number"),
        pytest.param("http://127.0.0.1:0", "port", id="port-zero"),
        pytest.param("http://127.0.0.1:70000", "port", id="port-too-large"),
        pytest.param("http://127.0.0.1:", "port", id="port-empty"),
        pytest.param("http://kinesis_local:4567", "host", id="underscore-in-host"),
        pytest.param("http://-kinesis:4567", "host", id="host-starts-with-hyphen"),
        pytest.param("http://999.0.0.1:4567", "host", id="bad-ipv4"),
        pytest.param("http://[::g]:4567", "host", id="bad-ipv6"),
        pytest.param("http://user:pw@127.0.0.1:4567", "credentials", id="credentials"),
        pytest.param("http://127.0.0.1:4567/?x=1", "query", id="query"),
        pytest.param("http://127.0.0.1:4567/#top", "fragment", id="fragment"),
    ],
)
def test_a_bad_endpoint_url_is_refused_naming_the_key(tmp_path: Path, url: str, words: str) -> None:
    message = destination_error(tmp_path, endpoint_url=url)
    assert "destinations.0.endpoint_url: " in message
    assert words in message
    assert "pw" not in message  # the value is not quoted: it may hold credentials


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:4567",
        "https://kinesis.us-east-1.amazonaws.com",
        "https://vpce-0a1b-c2d3.kinesis.us-east-1.vpce.amazonaws.com/",
        "http://Kinesis.Local:4567",
        "http://[::1]:4567",
        "http://kinesis.:4567",
    ],
)
def test_good_endpoint_urls_are_accepted(tmp_path: Path, url: str) -> None:
    """Guards the checks above against refusing what botocore takes (passes before them too)."""
    path = config_file(tmp_path, endpoint_url=url)
    assert load_settings(path, environ={}).destinations[0].endpoint_url == url


@pytest.mark.parametrize(
    ("servers", "words"),
    [
        pytest.param("host:notaport", "port", id="port-not-a-number"),
        pytest.param("host", "host:port", id="no-port"),
        pytest.param("host:", "port", id="empty-port"),
        pytest.param("host:0", "port", id="port-zero"),
        pytest.param("host:65536", "port", id="port-too-large"),
        pytest.param("host:+9092", "port", id="port-with-sign"),
        pytest.param("", "host:port", id="empty"),
        pytest.param("a:9092,", "empty", id="trailing-comma"),
        pytest.param("a:9092,,b:9092", "empty", id="double-comma"),
        pytest.param("::1:9092", "brackets", id="ipv6-without-brackets"),
        pytest.param("[::1]", "host:port", id="ipv6-without-port"),
        pytest.param("[::g]:9092", "host", id="bad-ipv6"),
        pytest.param("[kafka]:9092", "host", id="brackets-around-a-name"),
        pytest.param("bad host:9092", "whitespace", id="space-in-host"),
        pytest.param("host:9092\n", "whitespace", id="trailing-newline"),
        pytest.param("-kafka:9092", "host", id="host-starts-with-hyphen"),
        pytest.param("kafka://host:9092", "host", id="url-instead-of-host-port"),
        pytest.param("300.1.1.1:9092", "host", id="bad-ipv4"),
    ],
)
def test_bad_bootstrap_servers_are_refused_naming_the_key(
    tmp_path: Path, servers: str, words: str
) -> None:
    message = kafka_error(tmp_path, bootstrap_servers=servers)
    assert "kafka.bootstrap_servers: " in message
    assert words in message


@pytest.mark.parametrize(
    "servers",
    [
        "127.0.0.1:9092",
        "kafka-1.example.internal:9092,kafka-2.example.internal:9092",
        "b-1.audiences.abc123.c2.kafka.us-east-1.amazonaws.com:9098",
        "[::1]:9092",
        "[::1]:9092,kafka:9092",
        "kafka_broker:9092",  # Docker Compose service names may hold underscores
        "kafka:1,kafka:65535",
    ],
)
def test_good_bootstrap_servers_are_accepted(tmp_path: Path, servers: str) -> None:
    """Guards the checks above against refusing good values (passes before them too)."""
    path = config_file(tmp_path, kafka={"bootstrap_servers": servers})
    assert load_settings(path, environ={}).kafka.bootstrap_servers == servers


def test_spaces_around_bootstrap_server_commas_are_dropped(tmp_path: Path) -> None:
    """Faust would otherwise hand aiokafka a broker URL with a space in it."""
    path = config_file(tmp_path, kafka={"bootstrap_servers": "a:1, b:2"})
    assert load_settings(path, environ={}).kafka.bootstrap_servers == "a:1,b:2"


@pytest.mark.parametrize(
    ("kafka", "key", "words"),
    [
        pytest.param(
            {"dlq_topic": "segment-qualifications"},
            "kafka.dlq_topic",
            "kafka.qualifications_topic",
            id="dlq-is-qualifications",
        ),
        pytest.param(
            {"dlq_topic": "profile-updates"},
            "kafka.dlq_topic",
            "kafka.profiles_topic",
            id="dlq-is-profiles",
        ),
        pytest.param(
            {"qualifications_topic": "kinesis-destination-dlq"},
            "kafka.dlq_topic",
            "kafka.qualifications_topic",
            id="qualifications-is-the-default-dlq",
        ),
        pytest.param(
            {"qualifications_topic": "events", "profiles_topic": "events"},
            "kafka.profiles_topic",
            "kafka.qualifications_topic",
            id="same-input-topics",
        ),
        pytest.param(
            {"qualifications_topic": "profile-updates"},
            "kafka.profiles_topic",
            "kafka.qualifications_topic",
            id="qualifications-is-the-default-profiles",
        ),
        pytest.param(
            {"qualifications_topic": "a.b", "profiles_topic": "a_b"},
            "kafka.profiles_topic",
            "collide",
            id="dot-and-underscore-collide",
        ),
        pytest.param(
            {"qualifications_topic": ""}, "kafka.qualifications_topic", "1-249", id="empty"
        ),
        pytest.param({"profiles_topic": "a b"}, "kafka.profiles_topic", "a-z", id="space"),
        pytest.param({"dlq_topic": "dead/letters"}, "kafka.dlq_topic", "a-z", id="slash"),
        pytest.param({"dlq_topic": "dlq\n"}, "kafka.dlq_topic", "a-z", id="trailing-newline"),
        pytest.param({"dlq_topic": "d\u00e9j\u00e0"}, "kafka.dlq_topic", "a-z", id="non-ascii"),
        pytest.param({"dlq_topic": "."}, "kafka.dlq_topic", "'.'", id="dot"),
        pytest.param({"dlq_topic": ".."}, "kafka.dlq_topic", "'..'", id="dot-dot"),
        pytest.param({"dlq_topic": "x" * 250}, "kafka.dlq_topic", "1-249", id="too-long"),
        pytest.param(
            {"control_topic": "profile-updates"},
            "kafka.control_topic",
            "kafka.profiles_topic",
            id="control-is-profiles",
        ),
        pytest.param(
            {"control_topic": "kinesis-destination-dlq"},
            "kafka.control_topic",
            "kafka.dlq_topic",
            id="control-is-dlq",
        ),
        pytest.param({"control_topic": "a b"}, "kafka.control_topic", "a-z", id="control-space"),
        pytest.param(
            {"qualifications_topic": "kinesis-destination-control"},
            "(top level)",
            "app_id: the control topic",
            id="default-control-is-qualifications",
        ),
    ],
)
def test_bad_topics_are_refused_naming_the_key(
    tmp_path: Path, kafka: dict[str, str], key: str, words: str
) -> None:
    message = kafka_error(tmp_path, **kafka)
    assert f"{key}: " in message
    assert words in message


def test_the_longest_topic_name_is_accepted(tmp_path: Path) -> None:
    """Guards the length check (passes before it too)."""
    path = config_file(tmp_path, kafka={"dlq_topic": "x" * 249})
    assert load_settings(path, environ={}).kafka.dlq_topic == "x" * 249


def test_duplicate_yaml_keys_are_refused_naming_the_path_and_lines(tmp_path: Path) -> None:
    path = write_text(
        tmp_path,
        """\
        app_id: one
        destinations:
          - name: a
            stream: s
            region: us-east-1
            stream: t
            segments: [{id: x}]
        app_id: two
        """,
    )
    message = load_error(path)
    assert "destinations.0.stream: " in message
    assert "lines 4 and 6" in message
    assert "app_id: " in message
    assert "lines 1 and 8" in message
    assert str(path) in message


def test_duplicate_keys_in_a_flow_mapping_are_refused(tmp_path: Path) -> None:
    path = write_text(
        tmp_path,
        """\
        destinations:
          - {name: a, stream: s, region: us-east-1, segments: [{id: x, id: y}]}
        """,
    )
    assert "destinations.0.segments.0.id: " in load_error(path)


def test_duplicate_keys_through_an_alias_are_refused(tmp_path: Path) -> None:
    path = write_text(
        tmp_path,
        """\
        kafka: &k {dlq_topic: a, dlq_topic: b}
        destinations:
          - {name: a, stream: s, region: us-east-1, segments: [{id: x}]}
        """,
    )
    assert "kafka.dlq_topic: " in load_error(path)


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    """A merge key's values are defaults that explicit keys replace: not duplicates."""
    path = write_text(
        tmp_path,
        """\
        base: &base {name: a, stream: s, region: us-east-1, segments: [{id: x}]}
        destinations:
          - <<: *base
            stream: t
        """,
    )
    # The unknown top-level key 'base' is the only complaint.
    message = load_error(path)
    assert "base: unknown key" in message
    assert "stream" not in message


def test_duplicate_keys_in_an_environment_mapping_are_refused(tmp_path: Path) -> None:
    message = load_error(
        minimal(tmp_path), environ={"KD_DESTINATIONS__0__SEGMENTS": "[{id: a, id: b}]"}
    )
    assert "KD_DESTINATIONS__0__SEGMENTS" in message
    assert "0.id" in message


MSK_IAM = {"security_protocol": "SASL_SSL", "sasl_mechanism": "AWS_MSK_IAM"}


@pytest.mark.parametrize(
    ("destination", "kafka", "key"),
    [
        pytest.param(
            {"attributes": ["person.name\n"]},
            None,
            "destinations.0.attributes",
            id="attribute-with-trailing-newline",
        ),
        pytest.param(
            {"region": "us-east-\u0661"},
            None,
            "destinations.0.region",
            id="region-with-a-non-ascii-digit",
        ),
        pytest.param(
            {},
            {**MSK_IAM, "aws_region": "us-east-1\n"},
            "kafka.aws_region",
            id="msk-region-with-trailing-newline",
        ),
        pytest.param(
            {},
            {**MSK_IAM, "aws_region": "us-east-\u0661"},
            "kafka.aws_region",
            id="msk-region-with-a-non-ascii-digit",
        ),
        pytest.param(
            {},
            {
                **MSK_IAM,
                "aws_region": "us-east-1",
                "aws_role_arn": "arn:aws:iam::123456789012:role/msk\n",
            },
            "kafka.aws_role_arn",
            id="role-arn-with-trailing-newline",
        ),
    ],
)
def test_a_trailing_newline_or_foreign_digit_does_not_pass_a_pattern(
    tmp_path: Path, destination: dict[str, Any], kafka: dict[str, Any] | None, key: str
) -> None:
    assert f"{key}: " in load_error(config_file(tmp_path, kafka=kafka, **destination))


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("KD_KAFKA__BOOTSTRAP_SERVERS", "host:notaport", "kafka.bootstrap_servers"),
        ("KD_KAFKA__DLQ_TOPIC", "profile-updates", "kafka.dlq_topic"),
        ("KD_DESTINATIONS__0__ENDPOINT_URL", "http://", "destinations.0.endpoint_url"),
        ("KD_DESTINATIONS__0__ATTRIBUTES__0", "a.b\n", "destinations.0.attributes"),
    ],
)
def test_environment_values_are_validated_alike(
    tmp_path: Path, variable: str, value: str, key: str
) -> None:
    assert f"{key}: " in load_error(minimal(tmp_path), environ={variable: value})


TRAPS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "endpoint-no-host": ("destinations.0.endpoint_url", {"endpoint_url": "http://"}, {}),
    "endpoint-space": ("destinations.0.endpoint_url", {"endpoint_url": "http://a b:4567"}, {}),
    "bootstrap-port": ("kafka.bootstrap_servers", {}, {"bootstrap_servers": "host:notaport"}),
}


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("trap", sorted(TRAPS))
def test_commands_stop_on_a_trap_with_exit_code_2(tmp_path: Path, command: str, trap: str) -> None:
    """The real command line, as an operator runs it: exit 2, the key, no traceback."""
    key, destination, kafka = TRAPS[trap]
    path = config_file(tmp_path, kafka=kafka, **destination)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    result = subprocess.run(
        [sys.executable, "-m", "worker", command, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{key}: " in result.stderr


def test_control_topic_defaults_to_the_app_id(tmp_path: Path) -> None:
    settings = load_settings(config_file(tmp_path), environ={})
    assert settings.control_topic == "kinesis-destination-control"
    path = config_file(tmp_path, kafka={"control_topic": "commands"})
    assert load_settings(path, environ={}).control_topic == "commands"


@pytest.mark.parametrize("share", [0, -0.1, 1.01, "half"])
def test_backfill_share_is_a_share(tmp_path: Path, share: Any) -> None:
    message = load_error(
        write_config(tmp_path, {"destinations": [minimal_destination(backfill_share=share)]})
    )
    assert "destinations.0.backfill_share: " in message


def test_backfill_takes_half_the_write_limit_by_default(tmp_path: Path) -> None:
    (destination,) = load_settings(config_file(tmp_path), environ={}).destinations
    assert destination.backfill_share == 0.5


def test_parking_topics_are_named_after_the_destination_and_never_shared() -> None:
    settings = Settings.model_validate({"destinations": [minimal_destination()]})
    assert settings.parking_topic("churn-risk") == "kinesis-destination-parked-churn-risk"
    spaced = settings.parking_topic("Churn risk")
    assert spaced.startswith("kinesis-destination-parked-Churn_risk-")
    assert spaced != settings.parking_topic("Churn_risk")  # the hash tells them apart
    # No destination name can give a topic the worker uses for something else.
    assert settings.parking_topic("changelog") != "kinesis-destination-parking-changelog"
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    assert len(settings.parking_topic(long_a)) <= 249
    assert settings.parking_topic(long_a) != settings.parking_topic(long_b)
