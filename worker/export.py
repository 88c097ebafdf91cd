"""The Kinesis record of one destination and its partition key (CONTRACT section 3).

``RecordFormat`` is the API: build one per destination at startup (it
precomputes the segment order, the per-segment name/timestamp fields and the
compiled attribute paths), then call ``build`` / ``partition_key`` per event.
The destination's settings are valid by then (worker.settings checks them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from worker.events import format_time
from worker.kinesis import MAX_PARTITION_KEY_CHARS
from worker.membership import SegmentState
from worker.settings import DestinationSettings, SegmentSettings
from worker.vocabulary import Status
from worker.xdm import Path, compile_paths, project

__all__ = [
    "RecordFormat",
    "encode",
    "partition_key",
]


def _segment_extras(
    segment: SegmentSettings, include_names: bool, include_timestamps: bool
) -> tuple[tuple[str, Any], ...]:
    extras: list[tuple[str, Any]] = []
    if include_names and segment.name is not None:
        extras.append(("name", segment.name))
    if include_timestamps:
        for key, value in (
            ("createdAt", segment.created_at),
            ("updatedAt", segment.updated_at),
            ("mappingCreatedAt", segment.mapping_created_at),
            ("mappingUpdatedAt", segment.mapping_updated_at),
        ):
            if value is not None:
                extras.append((key, value))
    return tuple(extras)


class RecordFormat:
    """One destination's record format, precomputed from its (valid) settings."""

    __slots__ = ("_segments", "attribute_paths", "namespaces", "segment_ids")

    def __init__(self, destination: DestinationSettings) -> None:
        self.attribute_paths: tuple[Path, ...] = compile_paths(destination.attributes)
        self.namespaces: tuple[str, ...] = tuple(destination.partition_key_namespaces)
        self._segments: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = tuple(
            (
                s.id,
                _segment_extras(
                    s, destination.include_segment_names, destination.include_segment_timestamps
                ),
            )
            for s in destination.segments
        )
        self.segment_ids: frozenset[str] = frozenset(s.id for s in destination.segments)

    def maps(self, segment_id: str) -> bool:
        return segment_id in self.segment_ids

    def build(
        self,
        attributes: Mapping[str, Any],
        identity_map: Mapping[str, Any] | None,
        memberships: Mapping[str, SegmentState],
        changed: Mapping[str, Status],
    ) -> dict[str, Any] | None:
        """The record's JSON object, or ``None`` when it would hold no segment.

        ``ups`` has, in the destination's segment order, every mapped segment
        the profile is a member of as ``existing``, overridden by ``changed``
        (which may also name segments no longer member, as ``exited``).
        Segments of ``changed`` must have a state in ``memberships``: it gives
        their ``lastQualificationTime``. The result may share objects with
        ``identity_map``; encode it, do not mutate it.
        """
        ups: dict[str, Any] = {}
        for segment_id, extras in self._segments:
            state = memberships.get(segment_id)
            status = changed.get(segment_id)
            if status is None:
                if state is None or not state.member:
                    continue
                status = Status.EXISTING
            elif state is None:
                raise ValueError(f"segment {segment_id!r} changed but has no stored state")
            entry: dict[str, Any] = {
                "lastQualificationTime": format_time(state.last_qualification_time),
                "status": status,
            }
            if extras:
                entry.update(extras)
            ups[segment_id] = entry
        if not ups:
            return None
        record = project(attributes, self.attribute_paths)
        record["segmentMembership"] = {"ups": ups}
        record["identityMap"] = identity_map if identity_map is not None else {}
        return record

    def partition_key(self, identity_map: Mapping[str, Any] | None, profile_id: str) -> str:
        return partition_key(identity_map, self.namespaces, profile_id)


def partition_key(
    identity_map: Mapping[str, Any] | None, namespaces: Sequence[str], profile_id: str
) -> str:
    """The Kinesis partition key of a profile's records.

    The first non-empty id under the first of ``namespaces`` that has one
    (a namespace whose ids are all empty is skipped), else the profile id.
    Longer than 256 code points -> its SHA-256 hex digest. Raises
    ``ValueError`` when the key would be empty (Kinesis refuses it).
    """
    key = _first_identity(identity_map, namespaces) if identity_map else None
    if key is None:
        key = profile_id
    if len(key) > MAX_PARTITION_KEY_CHARS:
        return hashlib.sha256(key.encode("utf-8")).hexdigest()
    if not key:
        raise ValueError("empty partition key: no identity in the namespaces and no profile id")
    return key


def _first_identity(identity_map: Mapping[str, Any], namespaces: Sequence[str]) -> str | None:
    for namespace in namespaces:
        identities = identity_map.get(namespace)
        if not identities:
            continue
        for identity in identities:
            value = identity.get("id") if isinstance(identity, Mapping) else None
            if isinstance(value, str) and value:
                return value
    return None


def encode(record: dict[str, Any]) -> bytes:
    """The Kinesis ``Data``: compact UTF-8 JSON."""
    return orjson.dumps(record)
