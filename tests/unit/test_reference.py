"""The reference model of the contract (`reference/`) against the contract's own examples.

The worker is checked against this model (tests/unit/test_xdm.py, `make demo`), so the
model is checked here, by hand, against docs/contract.md sections 2 and 3.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from reference import Config, Model, aep_time, parse_config, partition_key

A, B, SHARED = "seg-a", "seg-b", "seg-shared"
QUALIFICATIONS, PROFILES = "quals", "profiles"
T = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)
IDS = {"ecid": [{"id": "e-1"}], "email": [{"id": "m-1"}]}


def config() -> Config:
    raw: dict[str, Any] = {
        "app_id": "app",
        "kafka": {"qualifications_topic": QUALIFICATIONS, "profiles_topic": PROFILES},
        "destinations": [
            {
                "name": "first",
                "stream": "s1",
                "include_segment_names": True,
                "partition_key_namespaces": ["ecid", "email"],
                "segments": [{"id": A, "name": "A"}, {"id": SHARED, "name": "Shared"}],
                "attributes": ["person.name.lastName"],
            },
            {
                "name": "second",
                "stream": "s2",
                "include_segment_timestamps": True,
                "segments": [{"id": B, "created_at": 1, "mapping_updated_at": 4}, {"id": SHARED}],
                "attributes": ["loyalty.tier"],
            },
        ],
    }
    raw["kafka"]["dlq_topic"] = "dlq"
    return parse_config(raw)


@pytest.fixture
def model() -> Model:
    m = Model(config())
    m.update("p-1", {"person": {"name": {"lastName": "Silva"}}, "loyalty": {"tier": "gold"}}, IDS)
    return m


def ups(model: Model, index: int = -1) -> dict[str, Any]:
    result: dict[str, Any] = model.records[index].data["segmentMembership"]["ups"]
    return result


def test_config_extras_follow_the_toggles() -> None:
    first, second = config().destinations
    assert [s.extras for s in first.segments] == [{"name": "A"}, {"name": "Shared"}]
    assert [s.extras for s in second.segments] == [{"createdAt": 1, "mappingUpdatedAt": 4}, {}]
    assert first.attributes == (("person", "name", "lastName"),)
    assert config().mapped_segments() == [A, SHARED, B]


def test_aep_time_is_utc_whole_seconds() -> None:
    local = datetime(2020, 5, 26, 1, 37, 33, 900_000, tzinfo=timezone(timedelta(hours=2)))
    assert aep_time(local) == "2020-05-25T23:37:33Z"


def test_partition_key() -> None:
    assert partition_key(IDS, ["ecid", "email"], "p-1") == "e-1"
    assert partition_key(IDS, ["nope", "email"], "p-1") == "m-1"
    assert partition_key({"ecid": [{"id": ""}, {"id": "e-2"}]}, ["ecid"], "p-1") == "e-2"
    assert partition_key(IDS, [], "p-1") == "p-1"
    long = "x" * 257
    assert partition_key({"ecid": [{"id": long}]}, ["ecid"], "p") == (
        hashlib.sha256(long.encode()).hexdigest()
    )
    assert partition_key({"ecid": [{"id": long[:256]}]}, ["ecid"], "p") == long[:256]


def test_a_profile_update_of_a_non_member_exports_nothing(model: Model) -> None:
    assert model.records == []
    assert model.outcomes[PROFILES, "no_export"] == 1


def test_entry_exit_and_the_membership_table(model: Model) -> None:
    model.qualify("p-1", A, "existing", T)  # not a member -> realized
    assert len(model.records) == 1
    record = model.records[0]
    assert (record.destination, record.partition_key) == (0, "e-1")
    assert record.data == {
        "person": {"name": {"lastName": "Silva"}},
        "segmentMembership": {
            "ups": {
                A: {
                    "lastQualificationTime": "2025-03-01T08:00:00Z",
                    "status": "realized",
                    "name": "A",
                }
            }
        },
        "identityMap": IDS,
    }
    model.qualify("p-1", A, "realized", T + timedelta(seconds=1))  # member: duplicate
    model.qualify("p-1", B, "exited", T)  # not a member: nothing
    assert len(model.records) == 1
    model.qualify("p-1", SHARED, "realized", T + timedelta(seconds=2))  # both destinations
    assert [r.destination for r in model.records[1:]] == [0, 1]
    assert ups(model, 1) == {
        A: {"lastQualificationTime": "2025-03-01T08:00:01Z", "status": "existing", "name": "A"},
        SHARED: {
            "lastQualificationTime": "2025-03-01T08:00:02Z",
            "status": "realized",
            "name": "Shared",
        },
    }
    model.qualify("p-1", A, "exited", T + timedelta(seconds=3))
    assert ups(model)[A]["status"] == "exited"
    model.qualify("p-1", SHARED, "existing", T + timedelta(seconds=4))  # duplicate
    model.update("p-1", {"person": {"name": {"lastName": "Souza"}}}, None)
    assert list(ups(model)) == [SHARED]  # a segment left earlier is not listed
    assert ups(model)[SHARED]["status"] == "existing"
    assert ups(model)[SHARED]["lastQualificationTime"] == "2025-03-01T08:00:04Z"
    assert model.outcomes[QUALIFICATIONS, "exported"] == 3
    assert model.outcomes[QUALIFICATIONS, "duplicate"] == 2
    assert model.outcomes[QUALIFICATIONS, "not_member"] == 1


def test_stale_and_equal_times(model: Model) -> None:
    model.qualify("p-1", A, "exited", T)  # applied, exports nothing
    model.qualify("p-1", A, "realized", T - timedelta(seconds=1))  # stale
    assert model.records == []
    model.qualify("p-1", A, "realized", T)  # an equal time is not stale
    assert ups(model)[A]["status"] == "realized"
    assert model.outcomes[QUALIFICATIONS, "stale"] == 1


def test_unmapped_segments_are_ignored(model: Model) -> None:
    model.qualify("unknown-profile", "nobody-maps-it", "realized", T)
    assert model.records == []
    assert model.outcomes[QUALIFICATIONS, "unmapped"] == 1


def test_profile_updates_export_selected_changes_of_members(model: Model) -> None:
    model.qualify("p-1", A, "realized", T)
    model.update("p-1", {"loyalty": {"tier": "silver"}}, None)  # second: not a member
    model.update("p-1", {"homeAddress": {"city": "Lyon"}}, None)  # selected by nobody
    model.update("p-1", {"person": {"name": {"lastName": "Silva"}}}, None)  # the same value
    assert len(model.records) == 1
    model.update("p-1", {"person": {"name": {"lastName": None}}}, None)  # disappears
    assert "person" not in model.records[-1].data
    assert ups(model)[A]["status"] == "existing"
    model.update("p-1", {}, {"email": [{"id": "m-2"}]})  # identities: every member destination
    assert model.records[-1].partition_key == "m-2"
    assert model.records[-1].data["identityMap"] == {"email": [{"id": "m-2"}]}
    assert len(model.records) == 3
    assert model.outcomes[PROFILES, "exported"] == 2


def test_deletion_exits_every_segment_once(model: Model) -> None:
    model.qualify("p-1", A, "realized", T)
    model.qualify("p-1", B, "realized", T + timedelta(seconds=1))
    model.qualify("p-1", B, "exited", T + timedelta(seconds=2))
    model.qualify("p-1", SHARED, "realized", T + timedelta(seconds=3))
    before = len(model.records)
    model.delete("p-1")
    first, second = model.records[before:]
    assert {k: v["status"] for k, v in first.data["segmentMembership"]["ups"].items()} == {
        A: "exited",
        SHARED: "exited",
    }
    assert list(second.data["segmentMembership"]["ups"]) == [SHARED]  # B was left before
    assert first.data["identityMap"] == IDS
    assert second.data["loyalty"] == {"tier": "gold"}
    assert "p-1" not in model.profiles
    assert model.outcomes[PROFILES, "exported"] == 1


def test_deleting_a_profile_in_no_segment(model: Model) -> None:
    model.delete("p-1")
    assert model.records == []
    assert model.outcomes[PROFILES, "deleted"] == 1


def test_bad_events_are_counted_and_change_nothing(model: Model) -> None:
    model.bad(QUALIFICATIONS, "invalid_json")
    model.bad(PROFILES, "invalid_json")
    assert model.dead_letters == {"invalid_json": 2}
    assert model.outcomes[QUALIFICATIONS, "dead_lettered"] == 1
    assert model.records == []


def test_identities_of_qualifications_are_remembered_while_the_table_has_none() -> None:
    m = Model(config())
    ecid = {"ecid": [{"id": "e-9"}]}
    m.qualify("p-9", A, "realized", T, ecid)  # a profile known only from this event
    m.update("p-9", {"person": {"name": {"lastName": "Costa"}}}, None)
    m.qualify("p-9", A, "realized", T - timedelta(seconds=1), IDS)  # stale: not remembered
    m.qualify("p-9", A, "exited", T + timedelta(seconds=1))
    assert [r.data["identityMap"] for r in m.records] == [ecid, ecid, ecid]
    assert [r.partition_key for r in m.records] == ["e-9", "e-9", "e-9"]
    m.update("p-9", {}, IDS)  # the profile table's identities win
    m.qualify("p-9", A, "realized", T + timedelta(seconds=2), ecid)
    assert m.records[-1].data["identityMap"] == IDS
    m.delete("p-9")  # forgets them with the rest
    m.qualify("p-9", A, "realized", T + timedelta(seconds=3))
    assert m.records[-1].data["identityMap"] == {}
    assert m.records[-1].partition_key == "p-9"
