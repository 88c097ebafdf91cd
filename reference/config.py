"""The parts of the configuration file (docs/configuration.md) that shape records."""

from __future__ import annotations

from dataclasses import dataclass

from reference.xdm import Json

# Configuration key -> the record's key, with include_segment_timestamps on.
TIMESTAMPS = (
    ("created_at", "createdAt"),
    ("updated_at", "updatedAt"),
    ("mapping_created_at", "mappingCreatedAt"),
    ("mapping_updated_at", "mappingUpdatedAt"),
)


@dataclass(frozen=True)
class Segment:
    id: str
    extras: Json  # name / timestamps as the record carries them


@dataclass(frozen=True)
class Destination:
    name: str
    stream: str
    namespaces: tuple[str, ...]
    segments: tuple[Segment, ...]
    attributes: tuple[tuple[str, ...], ...]

    def maps(self, segment_id: str) -> bool:
        return any(segment.id == segment_id for segment in self.segments)


@dataclass(frozen=True)
class Config:
    app_id: str
    qualifications_topic: str
    profiles_topic: str
    dlq_topic: str
    destinations: tuple[Destination, ...]

    @property
    def topics(self) -> list[str]:
        return [self.qualifications_topic, self.profiles_topic, self.dlq_topic]

    def mapped_segments(self) -> list[str]:
        ids: list[str] = []
        for destination in self.destinations:
            ids.extend(s.id for s in destination.segments if s.id not in ids)
        return ids


def parse_segment(raw: Json, names: bool, timestamps: bool) -> Segment:
    extras: Json = {}
    if names and raw.get("name") is not None:
        extras["name"] = raw["name"]
    if timestamps:
        for key, name in TIMESTAMPS:
            if raw.get(key) is not None:
                extras[name] = raw[key]
    return Segment(raw["id"], extras)


def parse_destination(raw: Json) -> Destination:
    names = bool(raw.get("include_segment_names"))
    timestamps = bool(raw.get("include_segment_timestamps"))
    return Destination(
        name=raw["name"],
        stream=raw["stream"],
        namespaces=tuple(raw.get("partition_key_namespaces") or ()),
        segments=tuple(parse_segment(s, names, timestamps) for s in raw["segments"]),
        attributes=tuple(tuple(a.split(".")) for a in raw.get("attributes") or ()),
    )


def parse_config(raw: Json) -> Config:
    """A configuration file's contents (as YAML loads them), without defaults or checks."""
    kafka: Json = raw["kafka"]
    return Config(
        app_id=raw["app_id"],
        qualifications_topic=kafka["qualifications_topic"],
        profiles_topic=kafka["profiles_topic"],
        dlq_topic=kafka["dlq_topic"],
        destinations=tuple(parse_destination(d) for d in raw["destinations"]),
    )
