"""Parsing of the input topics: every bad-event reason, times, tombstones."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.events import (
    BadEvent,
    ProfileUpdate,
    Qualification,
    decode_key,
    format_time,
    parse_identity_map,
    parse_profile_update,
    parse_qualification,
    parse_time,
)
from worker.vocabulary import DeadLetterReason as Reason
from worker.vocabulary import Status

KEY = b"p-0001"
SEGMENT = "59bd2fkd-3c48-4b18-bf56-4f5c5e6967ae"
_DROP: Any = object()  # marks a field to leave out of the body
ECID = {"ecid": [{"id": "14575006536349286404619648085736425115"}]}


def qualification(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "profileId": "p-0001",
        "segmentId": SEGMENT,
        "status": "realized",
        "qualificationTime": "2020-05-25T23:37:33Z",
        "identityMap": ECID,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _DROP}


def profile(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "profileId": "p-0001",
        "updateTime": "2020-05-25T21:20:00Z",
        "attributes": {"person": {"name": {"firstName": "Ana", "lastName": "Silva"}}},
        "identityMap": ECID,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _DROP}


def dumps(body: Any) -> bytes:
    return orjson.dumps(body)


# --- qualifications -------------------------------------------------------------


def test_contract_example_qualification() -> None:
    event = parse_qualification(KEY, dumps(qualification()))
    assert event == Qualification(
        profile_id="p-0001",
        segment_id=SEGMENT,
        status=Status.REALIZED,
        qualification_time=datetime(2020, 5, 25, 23, 37, 33, tzinfo=UTC),
        identity_map=ECID,
    )
    assert event.qualification_time.utcoffset() == timedelta(0)


@pytest.mark.parametrize("status", ["realized", "existing", "exited"])
def test_every_status_is_accepted(status: str) -> None:
    assert parse_qualification(KEY, dumps(qualification(status=status))).status == status


@pytest.mark.parametrize("identity_map", [_DROP, None])
def test_identity_map_is_optional(identity_map: Any) -> None:
    body = qualification(identityMap=identity_map)
    assert parse_qualification(KEY, dumps(body)).identity_map is None


def test_unknown_fields_are_ignored() -> None:
    event = parse_qualification(KEY, dumps(qualification(extra={"x": 1})))
    assert event.segment_id == SEGMENT


def test_identity_extra_keys_are_kept() -> None:
    im = {"email": [{"id": "a@b.c", "authenticatedState": "authenticated", "primary": True}]}
    assert parse_qualification(KEY, dumps(qualification(identityMap=im))).identity_map == im


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (KEY, None, "missing_value"),
        (KEY, b"", "missing_value"),
        (KEY, b"{", "invalid_json"),
        (KEY, b"\xff\xfe", "invalid_json"),
        (KEY, b"NaN", "invalid_json"),
        (KEY, b"[]", "not_an_object"),
        (KEY, b"null", "not_an_object"),
        (KEY, b'"p-0001"', "not_an_object"),
        (KEY, b"42", "not_an_object"),
        (None, dumps(qualification()), "missing_key"),
        (b"", dumps(qualification()), "missing_key"),
        (b"\xc3\x28", dumps(qualification()), "invalid_key"),
        (b"p-0002", dumps(qualification()), "key_mismatch"),
        (b'"p-0001"', dumps(qualification()), "key_mismatch"),
        (KEY, dumps(qualification(profileId=_DROP)), "missing_field"),
        (KEY, dumps(qualification(profileId=None)), "missing_field"),
        (KEY, dumps(qualification(profileId="")), "invalid_field"),
        (KEY, dumps(qualification(profileId=1)), "invalid_field"),
        (KEY, dumps(qualification(segmentId=_DROP)), "missing_field"),
        (KEY, dumps(qualification(segmentId="")), "invalid_field"),
        (KEY, dumps(qualification(segmentId=["s"])), "invalid_field"),
        (KEY, dumps(qualification(status=_DROP)), "missing_field"),
        (KEY, dumps(qualification(status="REALIZED")), "invalid_status"),
        (KEY, dumps(qualification(status="qualified")), "invalid_status"),
        (KEY, dumps(qualification(status=1)), "invalid_status"),
        (KEY, dumps(qualification(status=["realized"])), "invalid_status"),
        (KEY, dumps(qualification(qualificationTime=_DROP)), "missing_field"),
        (KEY, dumps(qualification(qualificationTime=None)), "missing_field"),
        (KEY, dumps(qualification(qualificationTime=1590449853)), "invalid_field"),
        (KEY, dumps(qualification(qualificationTime="2020-05-25T23:37:33")), "invalid_time"),
        (KEY, dumps(qualification(qualificationTime="yesterday")), "invalid_time"),
        (KEY, dumps(qualification(identityMap=[])), "invalid_field"),
        (KEY, dumps(qualification(identityMap={"ecid": "x"})), "invalid_field"),
        (KEY, dumps(qualification(identityMap={"ecid": ["x"]})), "invalid_field"),
        (KEY, dumps(qualification(identityMap={"ecid": [{}]})), "invalid_field"),
        (KEY, dumps(qualification(identityMap={"ecid": [{"id": 1}]})), "invalid_field"),
    ],
)
def test_bad_qualifications(key: bytes | None, value: bytes | None, reason: str) -> None:
    with pytest.raises(BadEvent) as info:
        parse_qualification(key, value)
    assert info.value.reason == reason
    assert str(info.value) == f"{reason}: {info.value.detail}"
    assert info.value.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("profileId", ""),
        ("segmentId", None),
        ("qualificationTime", "nope"),
        ("identityMap", {"ecid": [{"id": None}]}),
    ],
)
def test_bad_event_detail_names_the_field(field: str, value: Any) -> None:
    key = b"x" if field == "profileId" else KEY
    with pytest.raises(BadEvent) as info:
        parse_qualification(key, dumps(qualification(**{field: value})))
    assert field in info.value.detail


def test_bad_event_pickles() -> None:
    exc = BadEvent(Reason.INVALID_JSON, "the value is not valid JSON")
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.reason, copy.detail, str(copy)) == (exc.reason, exc.detail, str(exc))


def test_unicode_profile_id_matches_utf8_key() -> None:
    body = qualification(profileId="perfil-ção-😀")
    event = parse_qualification("perfil-ção-😀".encode(), dumps(body))
    assert event.profile_id == "perfil-ção-😀"


# --- profile updates ------------------------------------------------------------


def test_contract_example_profile_update() -> None:
    event = parse_profile_update(KEY, dumps(profile()))
    assert event == ProfileUpdate(
        profile_id="p-0001",
        update_time=datetime(2020, 5, 25, 21, 20, tzinfo=UTC),
        attributes={"person": {"name": {"firstName": "Ana", "lastName": "Silva"}}},
        identity_map=ECID,
    )


@pytest.mark.parametrize("value", [None, b""])
def test_tombstone(value: bytes | None) -> None:
    assert parse_profile_update(KEY, value) is None
    assert decode_key(KEY) == "p-0001"


@pytest.mark.parametrize("key", [None, b""])
def test_tombstone_without_key(key: bytes | None) -> None:
    with pytest.raises(BadEvent) as info:
        parse_profile_update(key, None)
    assert info.value.reason == "missing_key"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"updateTime": _DROP}, None),
        ({"updateTime": None}, None),
        ({"updateTime": "2020-05-25T23:20:00+02:00"}, datetime(2020, 5, 25, 21, 20, tzinfo=UTC)),
    ],
)
def test_update_time_is_optional(overrides: dict[str, Any], expected: datetime | None) -> None:
    event = parse_profile_update(KEY, dumps(profile(**overrides)))
    assert event is not None
    assert event.update_time == expected


@pytest.mark.parametrize("attributes", [_DROP, None])
def test_attributes_default_to_empty(attributes: Any) -> None:
    event = parse_profile_update(KEY, dumps(profile(attributes=attributes)))
    assert event is not None
    assert event.attributes == {}


@pytest.mark.parametrize("identity_map", [_DROP, None])
def test_profile_identity_map_is_optional(identity_map: Any) -> None:
    event = parse_profile_update(KEY, dumps(profile(identityMap=identity_map)))
    assert event is not None
    assert event.identity_map is None


def test_empty_identity_map_is_kept() -> None:
    event = parse_profile_update(KEY, dumps(profile(identityMap={})))
    assert event is not None
    assert event.identity_map == {}


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (KEY, b"{]", "invalid_json"),
        (KEY, b"[1]", "not_an_object"),
        (None, dumps(profile()), "missing_key"),
        (b"\xff", dumps(profile()), "invalid_key"),
        (b"p-9", dumps(profile()), "key_mismatch"),
        (KEY, dumps(profile(profileId=_DROP)), "missing_field"),
        (KEY, dumps(profile(profileId=7)), "invalid_field"),
        (KEY, dumps(profile(updateTime=0)), "invalid_field"),
        (KEY, dumps(profile(updateTime="2020-05-25")), "invalid_time"),
        (KEY, dumps(profile(updateTime="2020-05-25T21:20:00")), "invalid_time"),
        (KEY, dumps(profile(attributes=[])), "invalid_field"),
        (KEY, dumps(profile(attributes="x")), "invalid_field"),
        (KEY, dumps(profile(identityMap="x")), "invalid_field"),
        (KEY, dumps(profile(identityMap={"ecid": [{"id": ["x"]}]})), "invalid_field"),
    ],
)
def test_bad_profile_updates(key: bytes | None, value: bytes, reason: str) -> None:
    with pytest.raises(BadEvent) as info:
        parse_profile_update(key, value)
    assert info.value.reason == reason


# --- identity maps --------------------------------------------------------------


@pytest.mark.parametrize(
    "identity_map",
    [
        {},
        {"ecid": []},
        {"ecid": [{"id": ""}]},
        {"ecid": [{"id": "1"}, {"id": "2", "primary": True}], "email": [{"id": "a"}]},
    ],
)
def test_valid_identity_maps(identity_map: Any) -> None:
    assert parse_identity_map(identity_map) is identity_map


# --- times ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-05-25T23:37:33Z", datetime(2020, 5, 25, 23, 37, 33, tzinfo=UTC)),
        ("2020-05-25T23:37:33z", datetime(2020, 5, 25, 23, 37, 33, tzinfo=UTC)),
        ("2020-05-25t23:37:33Z", datetime(2020, 5, 25, 23, 37, 33, tzinfo=UTC)),
        ("2020-05-25 23:37:33Z", datetime(2020, 5, 25, 23, 37, 33, tzinfo=UTC)),
        ("2020-05-25T23:37:33+00:00", datetime(2020, 5, 25, 23, 37, 33, tzinfo=UTC)),
        ("2020-05-25T23:37:33-00:00", datetime(2020, 5, 25, 23, 37, 33, tzinfo=UTC)),
        ("2020-05-26T01:37:33+02:00", datetime(2020, 5, 25, 23, 37, 33, tzinfo=UTC)),
        ("2020-05-25T18:07:33-05:30", datetime(2020, 5, 25, 23, 37, 33, tzinfo=UTC)),
        ("2020-05-25T23:37:33.5Z", datetime(2020, 5, 25, 23, 37, 33, 500000, tzinfo=UTC)),
        ("2020-05-25T23:37:33.123456Z", datetime(2020, 5, 25, 23, 37, 33, 123456, tzinfo=UTC)),
        # Nanoseconds (Java producers): truncated to datetime's microseconds.
        ("2020-05-25T23:37:33.123456789Z", datetime(2020, 5, 25, 23, 37, 33, 123456, tzinfo=UTC)),
        ("2020-05-26T01:37:33.25+02:00", datetime(2020, 5, 25, 23, 37, 33, 250000, tzinfo=UTC)),
        ("2020-01-01T00:30:00+01:00", datetime(2019, 12, 31, 23, 30, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2020-05-25T23:37:33",  # naive
        "2020-05-25T23:37:33.123",  # naive with fraction
        "2020-05-25",
        "2020-05-25T23:37Z",  # no seconds
        "20200525T233733Z",  # ISO basic format
        "2020-W22-1T23:37:33Z",
        "2020-05-25T23:37:33+0200",
        "2020-05-25T23:37:33+02",
        "2020-05-25T23:37:33.Z",
        "2020-05-25T23:37:33 Z",
        "2020-13-25T23:37:33Z",
        "2020-02-30T23:37:33Z",
        "2020-05-25T24:00:00Z",
        "2020-05-25T23:37:60Z",
        "2020-05-25T23:37:33+24:00",
        "0001-01-01T00:00:00+01:00",  # before datetime.min in UTC
        "9999-12-31T23:59:59-01:00",  # after datetime.max in UTC
        "٢٠٢٠-05-25T23:37:33Z",  # non-ASCII digits
        " 2020-05-25T23:37:33Z",
        "2020-05-25T23:37:33Z\n",
        "",
    ],
)
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(BadEvent) as info:
        parse_time(text, "qualificationTime")
    assert info.value.reason == "invalid_time"
    assert "qualificationTime" in info.value.detail


@pytest.mark.parametrize(
    ("dt", "text"),
    [
        (datetime(2020, 5, 25, 23, 37, 33, tzinfo=UTC), "2020-05-25T23:37:33Z"),
        (datetime(2020, 5, 25, 23, 37, 33, 999999, tzinfo=UTC), "2020-05-25T23:37:33Z"),
        (
            datetime(2020, 5, 26, 1, 37, 33, tzinfo=timezone(timedelta(hours=2))),
            "2020-05-25T23:37:33Z",
        ),
        (datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC), "0005-01-02T03:04:05Z"),
    ],
)
def test_format_time(dt: datetime, text: str) -> None:
    assert format_time(dt) == text


def test_format_time_rejects_naive() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2020, 5, 25))


_aware = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
    ),
)


@given(_aware)
def test_format_then_parse_is_the_instant_without_fraction(dt: datetime) -> None:
    assert parse_time(format_time(dt)) == dt.replace(microsecond=0)


@given(_aware)
def test_isoformat_round_trips(dt: datetime) -> None:
    assert parse_time(dt.isoformat()) == dt
