"""Parsing of the two input topics (CONTRACT section 1).

Hand-written validation on top of ``orjson.loads``: this is the per-event hot
path, and a bad event must become a ``BadEvent`` with a stable reason code (the
caller dead-letters it and counts it by reason), never a crash.

Explicit JSON ``null`` is treated like an absent field: producers often emit
``null`` for "not set", and for the optional fields it means "no change".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias, cast

import orjson

from worker.vocabulary import DeadLetterReason as Reason
from worker.vocabulary import Status

__all__ = [
    "BadEvent",
    "IdentityMap",
    "ProfileUpdate",
    "Qualification",
    "decode_key",
    "format_time",
    "parse_identity_map",
    "parse_profile_update",
    "parse_qualification",
    "parse_time",
]

IdentityMap: TypeAlias = dict[str, list[dict[str, Any]]]

_STATUS_VALUES: Final = frozenset(Status)

# RFC 3339 date-time (seconds required, zone required). datetime.fromisoformat
# alone would also take ISO forms RFC 3339 forbids (no seconds, basic format,
# week dates), and re.ASCII keeps \d-like Unicode digits out.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)


class BadEvent(Exception):
    """An input event that can never be processed; the caller dead-letters it.

    ``reason`` is the stable machine code (metrics label, dead letter field);
    ``detail`` is for humans.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        # Both in args so the exception pickles and reprs faithfully.
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Qualification:
    profile_id: str
    segment_id: str
    status: Status
    qualification_time: datetime  # UTC
    identity_map: IdentityMap | None


@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    profile_id: str
    update_time: datetime | None  # UTC
    attributes: dict[str, Any] = field(default_factory=dict)
    identity_map: IdentityMap | None = None


def parse_time(s: str, field_name: str = "time") -> datetime:
    """An RFC 3339 time with a zone, as an aware UTC datetime.

    Fractions beyond microseconds are truncated. Raises ``BadEvent``
    ("invalid_time") naming ``field_name``.
    """
    if not _RFC3339.fullmatch(s):
        raise BadEvent(
            Reason.INVALID_TIME,
            f"{field_name} {s!r} is not an RFC 3339 date-time with a zone",
        )
    if s[-1] == "z":  # fromisoformat only knows the upper-case form
        s = s[:-1] + "Z"
    try:
        return datetime.fromisoformat(s).astimezone(UTC)
    except (ValueError, OverflowError):
        # Out-of-range fields (month 13, hour 25...) or a UTC instant
        # outside datetime's range.
        raise BadEvent(
            Reason.INVALID_TIME, f"{field_name} {s!r} is not a valid date-time"
        ) from None


def format_time(dt: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC, fractions truncated (the AEP format)."""
    if dt.tzinfo is None:
        raise ValueError("format_time needs a timezone-aware datetime")
    u = dt.astimezone(UTC)
    # Not strftime: glibc does not zero-pad years below 1000.
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}Z"


def decode_key(key: bytes | None) -> str:
    """The profile id carried by a Kafka key (raw UTF-8, no JSON quoting)."""
    if not key:
        raise BadEvent(Reason.MISSING_KEY, "the Kafka key (profile id) is missing or empty")
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        raise BadEvent(Reason.INVALID_KEY, "the Kafka key is not valid UTF-8") from None


def parse_identity_map(value: Any, field_name: str = "identityMap") -> IdentityMap:
    """Validate the XDM identity map shape: namespace -> [{"id": str, ...}, ...].

    Extra keys of an identity (authenticatedState, primary...) are kept.
    """
    if not isinstance(value, dict):
        raise BadEvent(Reason.INVALID_FIELD, f"{field_name} must be an object")
    for namespace, identities in value.items():
        if not isinstance(identities, list):
            raise BadEvent(Reason.INVALID_FIELD, f"{field_name}.{namespace} must be a list")
        for i, identity in enumerate(identities):
            if not isinstance(identity, dict):
                raise BadEvent(
                    Reason.INVALID_FIELD, f"{field_name}.{namespace}[{i}] must be an object"
                )
            if not isinstance(identity.get("id"), str):
                raise BadEvent(
                    Reason.INVALID_FIELD, f"{field_name}.{namespace}[{i}].id must be a string"
                )
    return cast(IdentityMap, value)


def _load_object(value: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(Reason.INVALID_JSON, f"the value is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadEvent(
            Reason.NOT_AN_OBJECT, f"the value is a JSON {type(body).__name__}, not an object"
        )
    return body


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise BadEvent(Reason.MISSING_FIELD, f"{name} is missing")
    if not isinstance(value, str) or not value:
        raise BadEvent(Reason.INVALID_FIELD, f"{name} must be a non-empty string")
    return value


def _profile_id(key: bytes | None, body: dict[str, Any]) -> str:
    key_id = decode_key(key)
    profile_id = _required_str(body, "profileId")
    if profile_id != key_id:
        # Keyed elsewhere, it would land in another partition than the
        # profile's other events: co-partitioning (and ordering) would break.
        raise BadEvent(
            Reason.KEY_MISMATCH,
            f"profileId {profile_id!r} differs from the Kafka key {key_id!r}",
        )
    return profile_id


def _time_field(body: dict[str, Any], name: str) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadEvent(Reason.INVALID_FIELD, f"{name} must be a string")
    return parse_time(value, name)


def _optional_identity_map(body: dict[str, Any]) -> IdentityMap | None:
    value = body.get("identityMap")
    return None if value is None else parse_identity_map(value)


def parse_qualification(key: bytes | None, value: bytes | None) -> Qualification:
    """A ``segment-qualifications`` event; raises ``BadEvent``."""
    if not value:
        raise BadEvent(Reason.MISSING_VALUE, "a qualification event has no value")
    body = _load_object(value)
    profile_id = _profile_id(key, body)
    segment_id = _required_str(body, "segmentId")
    status = body.get("status")
    if status is None:
        raise BadEvent(Reason.MISSING_FIELD, "status is missing")
    if not isinstance(status, str) or status not in _STATUS_VALUES:
        raise BadEvent(
            Reason.INVALID_STATUS,
            f"status {status!r} is not one of 'realized', 'existing', 'exited'",
        )
    qualification_time = _time_field(body, "qualificationTime")
    if qualification_time is None:
        raise BadEvent(Reason.MISSING_FIELD, "qualificationTime is missing")
    return Qualification(
        profile_id=profile_id,
        segment_id=segment_id,
        status=Status(status),
        qualification_time=qualification_time,
        identity_map=_optional_identity_map(body),
    )


def parse_profile_update(key: bytes | None, value: bytes | None) -> ProfileUpdate | None:
    """A ``profile-updates`` event; ``None`` for a tombstone (profile deleted).

    For a tombstone the key is still validated; the caller takes the profile
    id from ``decode_key(key)``.
    """
    if not value:
        decode_key(key)
        return None
    body = _load_object(value)
    profile_id = _profile_id(key, body)
    attributes = body.get("attributes")
    if attributes is None:
        attributes = {}
    elif not isinstance(attributes, dict):
        raise BadEvent(Reason.INVALID_FIELD, "attributes must be an object")
    return ProfileUpdate(
        profile_id=profile_id,
        update_time=_time_field(body, "updateTime"),
        attributes=attributes,
        identity_map=_optional_identity_map(body),
    )
