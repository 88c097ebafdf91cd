"""The exported record (CONTRACT section 3) and its partition key."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.export import RecordFormat, encode, partition_key
from worker.membership import SegmentState
from worker.settings import DestinationSettings
from worker.vocabulary import Status


def build_record(
    destination: DestinationSettings,
    attributes: Mapping[str, Any],
    identity_map: Mapping[str, Any] | None,
    memberships: Mapping[str, SegmentState],
    changed: Mapping[str, str],
) -> dict[str, Any] | None:
    """One record from a fresh format (the worker builds one per destination)."""
    statuses = {segment: Status(status) for segment, status in changed.items()}
    return RecordFormat(destination).build(attributes, identity_map, memberships, statuses)


EXITED = "7841ba61-23c1-4bb3-a495-00d3g5fe1e93"
EXISTING = "59bd2fkd-3c48-4b18-bf56-4f5c5e6967ae"
UNMAPPED = "00000000-0000-0000-0000-000000000000"

# Verbatim from the "Dados exportados" section of
# shared/seed/amazon-kinesis-destination.pt.md.
SEED_EXAMPLE = """
{
  "person": {
    "email": "yourstruly@adobe.con"
  },
  "segmentMembership": {
    "ups": {
      "7841ba61-23c1-4bb3-a495-00d3g5fe1e93": {
        "lastQualificationTime": "2020-05-25T21:24:39Z",
        "status": "exited"
      },
      "59bd2fkd-3c48-4b18-bf56-4f5c5e6967ae": {
        "lastQualificationTime": "2020-05-25T23:37:33Z",
        "status": "existing"
      }
    }
  },
  "identityMap": {
    "ecid": [
      {
        "id": "14575006536349286404619648085736425115"
      },
      {
        "id": "66478888669296734530114754794777368480"
      }
    ],
    "email_lc_sha256": [
      {
        "id": "655332b5fa2aea4498bf7a290cff017cb4"
      },
      {
        "id": "66baf76ef9de8b42df8903f00e0e3dc0b7"
      }
    ]
  }
}
"""

SEED_FILE = (
    Path(__file__).resolve().parents[3] / "shared" / "seed" / "amazon-kinesis-destination.pt.md"
)

IDENTITY_MAP: dict[str, Any] = {
    "ecid": [
        {"id": "14575006536349286404619648085736425115"},
        {"id": "66478888669296734530114754794777368480"},
    ],
    "email_lc_sha256": [
        {"id": "655332b5fa2aea4498bf7a290cff017cb4"},
        {"id": "66baf76ef9de8b42df8903f00e0e3dc0b7"},
    ],
}
ATTRIBUTES: dict[str, Any] = {
    "person": {"email": "yourstruly@adobe.con", "name": {"lastName": "Struly"}},
    "loyalty": {"points": 10},
}
T_EXITED = datetime(2020, 5, 25, 21, 24, 39, tzinfo=UTC)
T_EXISTING = datetime(2020, 5, 25, 23, 37, 33, tzinfo=UTC)
MEMBERSHIPS = {
    EXITED: SegmentState(False, T_EXITED),
    EXISTING: SegmentState(True, T_EXISTING),
}


def destination(**overrides: Any) -> DestinationSettings:
    config: dict[str, Any] = {
        "name": "High propensity to Kinesis",
        "stream": "aep-export",
        "region": "us-east-1",
        "partition_key_namespaces": ["ecid", "email_lc_sha256"],
        "segments": [
            {
                "id": EXITED,
                "name": "High propensity to convert",
                "created_at": 1590000000000,
                "updated_at": 1590000001000,
                "mapping_created_at": 1590000002000,
                "mapping_updated_at": 1590000003000,
            },
            {"id": EXISTING, "name": "Newsletter readers"},
        ],
        "attributes": ["person.email"],
    }
    config.update(overrides)
    return DestinationSettings.model_validate(config)


def test_seed_page_example() -> None:
    record = build_record(
        destination(), ATTRIBUTES, IDENTITY_MAP, MEMBERSHIPS, changed={EXITED: "exited"}
    )
    expected = orjson.loads(SEED_EXAMPLE)
    assert record is not None
    assert record == expected
    assert orjson.loads(encode(record)) == expected
    # Same key order as the example, at every level.
    assert encode(record) == orjson.dumps(expected)


@pytest.mark.skipif(not SEED_FILE.exists(), reason="shared seed pages not checked out")
def test_inlined_example_is_the_seed_pages() -> None:
    match = re.search(r"```json\n(.*?)```", SEED_FILE.read_text(encoding="utf-8"), re.DOTALL)
    assert match is not None
    assert orjson.loads(match.group(1)) == orjson.loads(SEED_EXAMPLE)


def test_contract_example() -> None:
    dest = destination(
        attributes=["person.name.lastName", "personalEmail.address"],
        segments=[{"id": EXITED}, {"id": EXISTING}],
    )
    attributes = {
        "person": {"name": {"firstName": "Ana", "lastName": "Silva"}},
        "personalEmail": {"address": "ana@example.com"},
    }
    identity_map = {
        "ecid": [{"id": "14575006536349286404619648085736425115"}],
        "email_lc_sha256": [{"id": "655332b5fa2aea4498bf7a290cff017cb4"}],
    }
    record = build_record(dest, attributes, identity_map, MEMBERSHIPS, {EXITED: "exited"})
    assert record == {
        "person": {"name": {"lastName": "Silva"}},
        "personalEmail": {"address": "ana@example.com"},
        "segmentMembership": {
            "ups": {
                EXITED: {"lastQualificationTime": "2020-05-25T21:24:39Z", "status": "exited"},
                EXISTING: {"lastQualificationTime": "2020-05-25T23:37:33Z", "status": "existing"},
            }
        },
        "identityMap": identity_map,
    }
    assert record is not None
    assert list(record) == ["person", "personalEmail", "segmentMembership", "identityMap"]


def ups(record: dict[str, Any] | None) -> dict[str, Any]:
    assert record is not None
    result: dict[str, Any] = record["segmentMembership"]["ups"]
    return result


@pytest.mark.parametrize(
    ("names", "timestamps", "exited_entry", "existing_entry"),
    [
        (False, False, {}, {}),
        (
            True,
            False,
            {"name": "High propensity to convert"},
            {"name": "Newsletter readers"},
        ),
        (
            False,
            True,
            {
                "createdAt": 1590000000000,
                "updatedAt": 1590000001000,
                "mappingCreatedAt": 1590000002000,
                "mappingUpdatedAt": 1590000003000,
            },
            {},
        ),
        (
            True,
            True,
            {
                "name": "High propensity to convert",
                "createdAt": 1590000000000,
                "updatedAt": 1590000001000,
                "mappingCreatedAt": 1590000002000,
                "mappingUpdatedAt": 1590000003000,
            },
            {"name": "Newsletter readers"},
        ),
    ],
)
def test_toggles(
    names: bool,
    timestamps: bool,
    exited_entry: dict[str, Any],
    existing_entry: dict[str, Any],
) -> None:
    dest = destination(include_segment_names=names, include_segment_timestamps=timestamps)
    entries = ups(build_record(dest, ATTRIBUTES, IDENTITY_MAP, MEMBERSHIPS, {EXITED: "exited"}))
    assert entries == {
        EXITED: {
            "lastQualificationTime": "2020-05-25T21:24:39Z",
            "status": "exited",
            **exited_entry,
        },
        EXISTING: {
            "lastQualificationTime": "2020-05-25T23:37:33Z",
            "status": "existing",
            **existing_entry,
        },
    }
    assert list(entries[EXITED])[:2] == ["lastQualificationTime", "status"]


def test_partial_timestamps_omit_missing_ones() -> None:
    dest = destination(
        include_segment_names=True,
        include_segment_timestamps=True,
        segments=[{"id": EXISTING, "updated_at": 5, "mapping_created_at": 0}],
    )
    entries = ups(build_record(dest, {}, None, MEMBERSHIPS, {}))
    assert entries == {
        EXISTING: {
            "lastQualificationTime": "2020-05-25T23:37:33Z",
            "status": "existing",
            "updatedAt": 5,
            "mappingCreatedAt": 0,
        }
    }


def test_unmapped_segments_are_excluded() -> None:
    dest = destination(segments=[{"id": EXISTING}])
    memberships = {
        **MEMBERSHIPS,
        UNMAPPED: SegmentState(True, T_EXISTING),
        EXITED: SegmentState(True, T_EXITED),  # a member, but not mapped here
    }
    changed: dict[str, Literal["realized", "exited"]] = {UNMAPPED: "realized"}
    entries = ups(build_record(dest, ATTRIBUTES, IDENTITY_MAP, memberships, changed))
    assert list(entries) == [EXISTING]


def test_realized_overrides_existing() -> None:
    memberships = {EXISTING: SegmentState(True, T_EXISTING), EXITED: SegmentState(True, T_EXITED)}
    entries = ups(build_record(destination(), {}, None, memberships, {EXISTING: "realized"}))
    assert entries == {
        EXITED: {"lastQualificationTime": "2020-05-25T21:24:39Z", "status": "existing"},
        EXISTING: {"lastQualificationTime": "2020-05-25T23:37:33Z", "status": "realized"},
    }


def test_ups_follows_destination_segment_order() -> None:
    memberships = {EXISTING: SegmentState(True, T_EXISTING), EXITED: SegmentState(True, T_EXITED)}
    forward = ups(build_record(destination(), {}, None, memberships, {}))
    backward_dest = destination(segments=[{"id": EXISTING}, {"id": EXITED}])
    backward = ups(build_record(backward_dest, {}, None, memberships, {}))
    assert list(forward) == [EXITED, EXISTING]
    assert list(backward) == [EXISTING, EXITED]


def test_non_members_are_left_out() -> None:
    memberships = {EXITED: SegmentState(False, T_EXITED), EXISTING: SegmentState(True, T_EXISTING)}
    assert list(ups(build_record(destination(), {}, None, memberships, {}))) == [EXISTING]


def test_tombstone_exports_every_membership_as_exited() -> None:
    memberships = {EXISTING: SegmentState(True, T_EXISTING), EXITED: SegmentState(True, T_EXITED)}
    changed: dict[str, Literal["realized", "exited"]] = {
        s: "exited" for s, state in memberships.items() if state.member
    }
    entries = ups(build_record(destination(), ATTRIBUTES, IDENTITY_MAP, memberships, changed))
    assert {s: e["status"] for s, e in entries.items()} == {EXITED: "exited", EXISTING: "exited"}
    assert entries[EXITED]["lastQualificationTime"] == "2020-05-25T21:24:39Z"


@pytest.mark.parametrize(
    ("memberships", "changed"),
    [
        ({}, {}),
        ({EXITED: SegmentState(False, T_EXITED)}, {}),
        ({UNMAPPED: SegmentState(True, T_EXITED)}, {UNMAPPED: "realized"}),
    ],
)
def test_nothing_to_send(
    memberships: dict[str, SegmentState], changed: dict[str, Literal["realized", "exited"]]
) -> None:
    assert build_record(destination(), ATTRIBUTES, IDENTITY_MAP, memberships, changed) is None


def test_changed_segment_without_state_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="no stored state"):
        build_record(destination(), {}, None, {}, {EXITED: "exited"})


@pytest.mark.parametrize(
    ("identity_map", "expected"),
    [(None, {}), ({}, {}), (IDENTITY_MAP, IDENTITY_MAP)],
)
def test_identity_map(identity_map: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    record = build_record(destination(), {}, identity_map, MEMBERSHIPS, {})
    assert record is not None
    assert record["identityMap"] == expected


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        ([], {}),
        (["person.email"], {"person": {"email": "yourstruly@adobe.con"}}),
        (["person.phone"], {}),  # a selected attribute the profile lacks is left out
        (
            ["loyalty.points", "person.name.lastName", "person.email"],
            {
                "loyalty": {"points": 10},
                "person": {"name": {"lastName": "Struly"}, "email": "yourstruly@adobe.con"},
            },
        ),
    ],
)
def test_selected_attributes(paths: list[str], expected: dict[str, Any]) -> None:
    record = build_record(destination(attributes=paths), ATTRIBUTES, None, MEMBERSHIPS, {})
    assert record is not None
    attributes = {k: v for k, v in record.items() if k not in ("segmentMembership", "identityMap")}
    assert attributes == expected
    assert list(record)[-2:] == ["segmentMembership", "identityMap"]


def test_record_format_is_reusable() -> None:
    fmt = RecordFormat(destination())
    assert fmt.maps(EXITED)
    assert not fmt.maps(UNMAPPED)
    assert fmt.segment_ids == frozenset({EXITED, EXISTING})
    assert fmt.attribute_paths == (("person", "email"),)
    first = fmt.build(ATTRIBUTES, IDENTITY_MAP, MEMBERSHIPS, {EXITED: Status.EXITED})
    second = fmt.build(ATTRIBUTES, IDENTITY_MAP, MEMBERSHIPS, {EXITED: Status.EXITED})
    assert first == second == orjson.loads(SEED_EXAMPLE)
    assert first is not second
    assert fmt.partition_key(IDENTITY_MAP, "p-1") == "14575006536349286404619648085736425115"


def test_records_do_not_alias_the_stored_profile() -> None:
    record = build_record(destination(attributes=["person"]), ATTRIBUTES, None, MEMBERSHIPS, {})
    assert record is not None
    record["person"]["email"] = "changed"
    assert ATTRIBUTES["person"]["email"] == "yourstruly@adobe.con"


def test_encode_is_compact_utf8() -> None:
    record = {"person": {"name": {"lastName": "Conceição 😀"}}, "n": 1}
    data = encode(record)
    assert data == '{"person":{"name":{"lastName":"Conceição 😀"}},"n":1}'.encode()


# --- partition key --------------------------------------------------------------

NAMESPACES = ["ecid", "email_lc_sha256"]


@pytest.mark.parametrize(
    ("identity_map", "namespaces", "expected"),
    [
        (IDENTITY_MAP, NAMESPACES, "14575006536349286404619648085736425115"),
        # namespace order is the destination's, not the map's
        (IDENTITY_MAP, ["email_lc_sha256", "ecid"], "655332b5fa2aea4498bf7a290cff017cb4"),
        ({"email_lc_sha256": [{"id": "e1"}], "ecid": [{"id": "c1"}]}, NAMESPACES, "c1"),
        # a missing namespace falls through to the next one
        ({"email_lc_sha256": [{"id": "e1"}]}, NAMESPACES, "e1"),
        ({"ecid": [], "email_lc_sha256": [{"id": "e1"}]}, NAMESPACES, "e1"),
        # empty ids are skipped, within and across namespaces
        ({"ecid": [{"id": ""}, {"id": "c2"}]}, NAMESPACES, "c2"),
        ({"ecid": [{"id": ""}], "email_lc_sha256": [{"id": "e1"}]}, NAMESPACES, "e1"),
        # identities in namespaces not listed are never used
        ({"phone": [{"id": "+351"}]}, NAMESPACES, "p-0001"),
        ({"ecid": [{"id": "c1"}]}, [], "p-0001"),
        # profile id fallback
        ({}, NAMESPACES, "p-0001"),
        (None, NAMESPACES, "p-0001"),
        ({"ecid": [{"id": ""}]}, NAMESPACES, "p-0001"),
        # extra keys of an identity do not matter
        ({"ecid": [{"id": "c1", "primary": True, "authenticatedState": "x"}]}, NAMESPACES, "c1"),
        # unicode ids pass through unchanged
        ({"ecid": [{"id": "çãõ-😀"}]}, NAMESPACES, "çãõ-😀"),
    ],
)
def test_partition_key(
    identity_map: dict[str, Any] | None, namespaces: list[str], expected: str
) -> None:
    assert partition_key(identity_map, namespaces, "p-0001") == expected


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("x", "x"),
        ("a" * 255, "a" * 255),
        ("a" * 256, "a" * 256),
        ("a" * 257, sha256("a" * 257)),
        # length is counted in code points, not UTF-8 bytes
        ("😀" * 256, "😀" * 256),
        ("😀" * 257, sha256("😀" * 257)),
        ("ç" * 256, "ç" * 256),
        ("ç" * 257, sha256("ç" * 257)),
    ],
)
def test_long_keys_are_hashed(key: str, expected: str) -> None:
    assert partition_key({"ecid": [{"id": key}]}, ["ecid"], "p") == expected
    assert partition_key(None, ["ecid"], key) == expected


def test_hashed_key_is_sha256_hex_of_utf8() -> None:
    key = "é" * 300
    assert partition_key(None, [], key) == hashlib.sha256(key.encode("utf-8")).hexdigest()
    assert len(partition_key(None, [], key)) == 64


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="empty partition key"):
        partition_key({"ecid": [{"id": ""}]}, ["ecid"], "")


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=600)
_ids = st.lists(st.fixed_dictionaries({"id": _text}), max_size=3)
_maps = st.none() | st.dictionaries(st.sampled_from(["ecid", "email", "phone"]), _ids)
_namespaces = st.lists(st.sampled_from(["ecid", "email", "phone", "other"]), max_size=3)


@given(_maps, _namespaces, _text.filter(bool))
def test_key_is_always_1_to_256_chars(
    identity_map: dict[str, Any] | None, namespaces: list[str], profile_id: str
) -> None:
    key = partition_key(identity_map, namespaces, profile_id)
    assert 1 <= len(key) <= 256
    key.encode("utf-8")  # always encodable for the Kinesis API


@given(_maps, _namespaces, _text.filter(bool))
def test_key_is_an_identity_or_the_profile_id_or_a_digest(
    identity_map: dict[str, Any] | None, namespaces: list[str], profile_id: str
) -> None:
    key = partition_key(identity_map, namespaces, profile_id)
    identities = [i["id"] for ns in namespaces for i in (identity_map or {}).get(ns, []) if i["id"]]
    source = identities[0] if identities else profile_id
    assert key == (source if len(source) <= 256 else sha256(source))
