"""The worker's configuration: one typed, validated settings object.

The YAML file of CONTRACT section 6 is the source; every value can be
overridden by an environment variable (see docs/configuration.md).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Strict(BaseModel):
    # Unknown keys are configuration mistakes: refuse them, naming the key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentSettings(_Strict):
    id: str = Field(min_length=1)
    name: str | None = None
    created_at: int | None = None
    updated_at: int | None = None
    mapping_created_at: int | None = None
    mapping_updated_at: int | None = None


class AuthSettings(_Strict):
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    role_arn: str | None = None
    external_id: str | None = None


class DestinationSettings(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    stream: str = Field(min_length=1)
    region: str = Field(min_length=1)
    endpoint_url: str | None = None
    auth: AuthSettings | None = None
    include_segment_names: bool = False
    include_segment_timestamps: bool = False
    partition_key_namespaces: list[str] = Field(default_factory=list)
    segments: list[SegmentSettings] = Field(min_length=1)
    attributes: list[str] = Field(default_factory=list)


class KafkaSettings(_Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    qualifications_topic: str = "segment-qualifications"
    profiles_topic: str = "profile-updates"
    dlq_topic: str = "kinesis-destination-dlq"


class Settings(_Strict):
    app_id: str = "kinesis-destination"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    destinations: list[DestinationSettings] = Field(min_length=1)
