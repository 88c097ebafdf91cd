"""BatchProcessor end to end with fakes: CONTRACT sections 2, 3 and 4.

Real KinesisWriter objects put into fake transports; state lives in a
dict-backed fake of the two tables; dead letters go to a list.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from tests.support import profile_update, qualification
from worker.kinesis import KinesisWriter, PutReply, StreamSummary, WriterConfig
from worker.membership import SegmentState, memberships_from_json
from worker.pipeline import (
    MAX_STATE_BYTES,
    BatchProcessor,
    BatchReport,
    DeadLetterSink,
    Destination,
    InputMessage,
    StateTables,
)
from worker.settings import Settings

QUALIFICATIONS = "segment-qualifications"
PROFILES = "profile-updates"

SEG_A = "7841ba61-23c1-4bb3-a495-00d3g5fe1e93"  # destination one only
SEG_B = "59bd2fkd-3c48-4b18-bf56-4f5c5e6967ae"  # both destinations
SEG_C = "c0ffee00-0000-4000-8000-000000000003"  # destination two only
UNMAPPED = "00000000-0000-0000-0000-000000000000"

T0 = "2020-05-25T21:24:39Z"
T1 = "2020-05-25T23:37:33Z"
T2 = "2020-05-26T08:00:00Z"
T_FRACTION = "2020-05-26T10:00:00.987654+02:00"  # = 08:00:00.987654Z

ECID = "14575006536349286404619648085736425115"
ECID_2 = "66478888669296734530114754794777368480"
EMAIL = "655332b5fa2aea4498bf7a290cff017cb4"
ECID_MAP: dict[str, Any] = {"ecid": [{"id": ECID}, {"id": ECID_2}]}
EMAIL_MAP: dict[str, Any] = {"email_lc_sha256": [{"id": EMAIL}]}
FULL_MAP: dict[str, Any] = {**ECID_MAP, **EMAIL_MAP}

ANA: dict[str, Any] = {
    "person": {"name": {"firstName": "Ana", "lastName": "Silva"}},
    "personalEmail": {"address": "ana@example.com"},
    "loyalty": {"tier": "gold", "points": 10},
}

SETTINGS = Settings.model_validate(
    {
        "kafka": {"qualifications_topic": QUALIFICATIONS, "profiles_topic": PROFILES},
        "destinations": [
            {
                "name": "Dest One",
                "stream": "stream-one",
                "region": "us-east-1",
                "include_segment_names": True,
                "partition_key_namespaces": ["ecid", "email_lc_sha256"],
                "segments": [
                    {"id": SEG_A, "name": "Segment A", "created_at": 1},
                    {"id": SEG_B, "name": "Segment B"},
                ],
                "attributes": ["person.name.lastName", "personalEmail.address"],
            },
            {
                "name": "Dest Two",
                "stream": "stream-two",
                "region": "eu-west-1",
                "include_segment_timestamps": True,
                "partition_key_namespaces": ["email_lc_sha256"],
                "segments": [
                    {
                        "id": SEG_B,
                        "name": "not exported: names are off",
                        "created_at": 1590000000000,
                        "updated_at": 1590000001000,
                        "mapping_created_at": 1590000002000,
                        "mapping_updated_at": 1590000003000,
                    },
                    {"id": SEG_C},
                ],
                "attributes": ["loyalty.tier"],
            },
        ],
    }
)
B_TIMESTAMPS = {
    "createdAt": 1590000000000,
    "updatedAt": 1590000001000,
    "mappingCreatedAt": 1590000002000,
    "mappingUpdatedAt": 1590000003000,
}


class Crash(BaseException):
    """Not an Exception: nothing on the way may swallow it (a killed worker)."""


# -- fakes -------------------------------------------------------------------------------


class FakeTables:
    """The two tables as dicts. Values are returned as stored (not copied), so
    a processor that mutated them in place would show in ``snapshot``."""

    def __init__(self) -> None:
        self.flushes = 0
        self.profiles: dict[str, dict[str, Any]] = {}
        self.memberships: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, Any, Any]] = []

    def get_profile(self, profile_id: str, scope: Any) -> dict[str, Any] | None:
        return self.profiles.get(profile_id)

    def get_memberships(self, profile_id: str, scope: Any) -> dict[str, Any] | None:
        return self.memberships.get(profile_id)

    def put_profile(self, profile_id: str, value: dict[str, Any] | None, scope: Any) -> None:
        self.writes.append(("profile", profile_id, value, scope))
        if value is None:
            self.profiles.pop(profile_id, None)
        else:
            self.profiles[profile_id] = value

    def put_memberships(self, profile_id: str, value: dict[str, Any] | None, scope: Any) -> None:
        self.writes.append(("memberships", profile_id, value, scope))
        if value is None:
            self.memberships.pop(profile_id, None)
        else:
            self.memberships[profile_id] = value

    async def flush(self) -> None:
        self.flushes += 1

    def snapshot(self) -> Any:
        return copy.deepcopy((self.profiles, self.memberships))

    def states(self, profile_id: str) -> dict[str, SegmentState]:
        return memberships_from_json(self.memberships[profile_id])


class FakeDeadLetters:
    def __init__(self, tables: FakeTables) -> None:
        self.sent: list[tuple[bytes | None, dict[str, Any]]] = []
        self.table_writes_at_send: list[int] = []
        self._tables = tables

    async def send(self, key: bytes | None, value: bytes) -> None:
        self.table_writes_at_send.append(len(self._tables.writes))
        self.sent.append((key, orjson.loads(value)))


class FakeTransport:
    """Accepts everything unless told otherwise; ``on_call`` runs before each call."""

    def __init__(self, max_record_bytes: int = 1024 * 1024) -> None:
        self.max_record_bytes = max_record_bytes
        self.calls: list[list[tuple[bytes, str]]] = []
        self.on_call: Callable[[], None] | None = None
        self.crash = False

    async def put_records(
        self, stream: str, records: Sequence[tuple[bytes, str]]
    ) -> list[PutReply]:
        if self.on_call is not None:
            self.on_call()
        if self.crash:
            raise Crash
        self.calls.append(list(records))
        return [PutReply(shard_id="shardId-000000000000") for _ in records]

    async def describe_stream(self, stream: str) -> StreamSummary:
        return StreamSummary("ACTIVE", 1, self.max_record_bytes)

    async def list_shards(self, stream: str) -> list[dict[str, Any]]:
        return []  # no shard map: the writer does not rate-limit

    async def close(self) -> None:
        pass

    def records(self) -> list[tuple[dict[str, Any], str]]:
        return [(orjson.loads(data), key) for call in self.calls for data, key in call]


def _typed(tables: FakeTables, letters: FakeDeadLetters) -> tuple[StateTables, DeadLetterSink]:
    return tables, letters  # mypy checks the fakes against the protocols


class World:
    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.tables = FakeTables()
        self.dead_letters = FakeDeadLetters(self.tables)
        self.transports = [FakeTransport() for _ in settings.destinations]
        config = WriterConfig(backoff_base_s=0.0, backoff_max_s=0.0, fatal_retry_s=0.0)
        self.writers = [
            KinesisWriter(d.stream, t, config)
            for d, t in zip(settings.destinations, self.transports, strict=True)
        ]
        self.processor = BatchProcessor(
            settings,
            [Destination(d, w) for d, w in zip(settings.destinations, self.writers, strict=True)],
            *_typed(self.tables, self.dead_letters),
        )
        self.offsets: dict[str, int] = {}

    async def run(self, *messages: InputMessage) -> BatchReport:
        return await self.processor.process(messages)

    def clear(self) -> None:
        for transport in self.transports:
            transport.calls.clear()
        self.tables.writes.clear()
        self.dead_letters.sent.clear()

    @property
    def one(self) -> list[tuple[dict[str, Any], str]]:
        return self.transports[0].records()

    @property
    def two(self) -> list[tuple[dict[str, Any], str]]:
        return self.transports[1].records()

    def message(self, topic: str, key: bytes | None, value: bytes | None) -> InputMessage:
        offset = self.offsets.get(topic, 100)
        self.offsets[topic] = offset + 1
        return InputMessage(topic, 3, offset, key, value, scope=f"{topic}@{offset}")

    def q(
        self,
        profile: str,
        segment: str,
        status: str,
        time: str,
        identity_map: dict[str, Any] | None = None,
    ) -> InputMessage:
        value = qualification(profile, segment, status, time, identity_map)
        return self.message(QUALIFICATIONS, profile.encode(), value)

    def update(
        self,
        profile: str,
        attributes: dict[str, Any] | None = None,
        identity_map: dict[str, Any] | None = None,
    ) -> InputMessage:
        value = profile_update(profile, attributes, identity_map, when=T0)
        return self.message(PROFILES, profile.encode(), value)

    def tombstone(self, profile: str) -> InputMessage:
        return self.message(PROFILES, profile.encode(), None)


@pytest.fixture
def world() -> World:
    return World()


def entry(time: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"lastQualificationTime": time, "status": status, **extra}


def ups(record: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = record["segmentMembership"]["ups"]
    return result


def at(time: str) -> datetime:
    return datetime.fromisoformat(time).astimezone(UTC)


# -- CONTRACT section 2: the membership table ------------------------------------------------


@pytest.mark.parametrize("status", ["realized", "existing"])
async def test_not_member_joining_exports_realized(world: World, status: str) -> None:
    report = await world.run(world.q("p1", SEG_A, status, T0, ECID_MAP))
    assert world.one == [
        (
            {
                "segmentMembership": {"ups": {SEG_A: entry(T0, "realized", name="Segment A")}},
                "identityMap": ECID_MAP,
            },
            ECID,
        )
    ]
    assert world.two == []  # SEG_A is not one of its segments
    assert report.outcomes == {"exported": 1}
    assert report.exports == 1
    assert world.tables.states("p1") == {SEG_A: SegmentState(True, at(T0))}


async def test_member_exiting_exports_exited(world: World) -> None:
    await world.run(world.q("p1", SEG_A, "realized", T0))
    world.clear()
    report = await world.run(world.q("p1", SEG_A, "exited", T1))
    [(record, key)] = world.one
    assert ups(record) == {SEG_A: entry(T1, "exited", name="Segment A")}
    assert key == "p1"
    assert world.two == []
    assert report.outcomes == {"exported": 1}
    assert world.tables.states("p1") == {SEG_A: SegmentState(False, at(T1))}


@pytest.mark.parametrize("status", ["realized", "existing"])
async def test_member_qualifying_again_exports_nothing(world: World, status: str) -> None:
    await world.run(world.q("p1", SEG_A, "realized", T0))
    world.clear()
    report = await world.run(world.q("p1", SEG_A, status, T1))
    assert world.one == world.two == []
    assert report.outcomes == {"duplicate": 1}
    assert report.exports == 0
    # Not stale, so applied: the time moves on.
    assert world.tables.states("p1") == {SEG_A: SegmentState(True, at(T1))}


async def test_not_member_exiting_exports_nothing_but_is_applied(world: World) -> None:
    report = await world.run(world.q("p1", SEG_A, "exited", T1))
    assert world.one == world.two == []
    assert report.outcomes == {"not_member": 1}
    assert world.tables.states("p1") == {SEG_A: SegmentState(False, at(T1))}
    # The stored time makes an older "realized" stale instead of a new member.
    world.clear()
    report = await world.run(world.q("p1", SEG_A, "realized", T0))
    assert world.one == []
    assert report.outcomes == {"stale": 1}


@pytest.mark.parametrize("status", ["realized", "existing", "exited"])
async def test_stale_event_changes_nothing(world: World, status: str) -> None:
    await world.run(world.q("p1", SEG_A, "realized", T1))
    before = world.tables.snapshot()
    world.clear()
    report = await world.run(world.q("p1", SEG_A, status, T0))
    assert world.one == world.two == []
    assert report.outcomes == {"stale": 1}
    assert world.tables.writes == []
    assert world.tables.snapshot() == before


async def test_an_event_at_the_same_time_is_applied(world: World) -> None:
    await world.run(world.q("p1", SEG_A, "realized", T0))
    world.clear()
    report = await world.run(world.q("p1", SEG_A, "exited", T0))
    assert report.outcomes == {"exported": 1}
    assert [ups(r) for r, _ in world.one] == [{SEG_A: entry(T0, "exited", name="Segment A")}]
    world.clear()
    report = await world.run(world.q("p1", SEG_A, "realized", T0))
    assert report.outcomes == {"exported": 1}
    assert [ups(r)[SEG_A]["status"] for r, _ in world.one] == ["realized"]


async def test_unmapped_segment_is_kept_counted_and_never_exported(world: World) -> None:
    report = await world.run(world.q("p1", UNMAPPED, "realized", T0, ECID_MAP))
    assert world.one == world.two == []
    assert report.outcomes == {"unmapped": 1}
    assert report.dead_letters == 0
    # Its membership is kept (a later mapping backfills it), its identities are
    # not remembered: only mapped segments' events set them (contract section 1).
    assert world.tables.states("p1") == {UNMAPPED: SegmentState(True, at(T0))}
    assert "p1" not in world.tables.profiles
    assert world.dead_letters.sent == []
    # Same rules as a mapped segment: an older event is stale, stored state unchanged.
    report = await world.run(world.q("p1", UNMAPPED, "exited", "2020-01-01T00:00:00Z"))
    assert report.outcomes == {"unmapped": 1}
    assert world.tables.states("p1") == {UNMAPPED: SegmentState(True, at(T0))}
    # A member of an unmapped segment only: an attribute change exports nothing,
    # and a mapped segment's record never lists the unmapped one.
    await world.run(world.update("p1", ANA, EMAIL_MAP))
    assert world.one == world.two == []
    await world.run(world.q("p1", SEG_A, "realized", T1))
    assert [ups(r) for r, _ in world.one] == [{SEG_A: entry(T1, "realized", name="Segment A")}]
    # A tombstone forgets it with the rest.
    await world.run(world.tombstone("p1"))
    assert "p1" not in world.tables.memberships


async def test_time_is_written_in_utc_whole_seconds(world: World) -> None:
    await world.run(world.q("p1", SEG_A, "realized", T_FRACTION))
    assert ups(world.one[0][0])[SEG_A]["lastQualificationTime"] == "2020-05-26T08:00:00Z"
    state = world.tables.states("p1")[SEG_A]
    assert state.last_qualification_time == datetime(2020, 5, 26, 8, 0, 0, 987654, tzinfo=UTC)


async def test_members_are_listed_as_existing(world: World) -> None:
    await world.run(world.q("p1", SEG_A, "realized", T0, FULL_MAP))
    await world.run(world.q("p1", SEG_C, "realized", T0, FULL_MAP))
    await world.run(world.q("p1", UNMAPPED, "realized", T0, FULL_MAP))
    world.clear()
    await world.run(world.q("p1", SEG_B, "realized", T1, FULL_MAP))
    [(one, _)] = world.one
    assert ups(one) == {
        SEG_A: entry(T0, "existing", name="Segment A"),
        SEG_B: entry(T1, "realized", name="Segment B"),
    }
    [(two, _)] = world.two
    assert ups(two) == {SEG_B: entry(T1, "realized", **B_TIMESTAMPS), SEG_C: entry(T0, "existing")}


# -- CONTRACT section 3: each destination its own record ----------------------------------------


async def test_two_destinations_get_their_own_records(world: World) -> None:
    await world.run(world.update("p1", ANA, FULL_MAP))
    report = await world.run(world.q("p1", SEG_B, "realized", T0))
    assert world.one == [
        (
            {
                "person": {"name": {"lastName": "Silva"}},
                "personalEmail": {"address": "ana@example.com"},
                "segmentMembership": {"ups": {SEG_B: entry(T0, "realized", name="Segment B")}},
                "identityMap": FULL_MAP,
            },
            ECID,
        )
    ]
    assert world.two == [
        (
            {
                "loyalty": {"tier": "gold"},
                "segmentMembership": {"ups": {SEG_B: entry(T0, "realized", **B_TIMESTAMPS)}},
                "identityMap": FULL_MAP,
            },
            EMAIL,
        )
    ]
    assert report.exports == 2
    assert world.writers[0].stream == "stream-one"
    assert world.writers[1].stream == "stream-two"


async def test_a_selected_attribute_the_profile_lacks_is_left_out(world: World) -> None:
    await world.run(world.update("p1", {"person": {"name": {"lastName": "Silva"}}}))
    await world.run(world.q("p1", SEG_B, "realized", T0))
    [(one, _)] = world.one
    assert "personalEmail" not in one
    assert one["person"] == {"name": {"lastName": "Silva"}}
    [(two, _)] = world.two
    assert list(two) == ["segmentMembership", "identityMap"]


async def test_identity_map_comes_from_the_profile_table_first(world: World) -> None:
    await world.run(world.update("p1", identity_map=EMAIL_MAP))
    await world.run(world.q("p1", SEG_A, "realized", T0, ECID_MAP))
    [(record, key)] = world.one
    assert record["identityMap"] == EMAIL_MAP
    assert key == EMAIL  # no ecid in the profile's identities: the next namespace


async def test_identity_map_comes_from_the_event_without_a_profile(world: World) -> None:
    await world.run(world.q("p1", SEG_A, "realized", T0, ECID_MAP))
    [(record, key)] = world.one
    assert record["identityMap"] == ECID_MAP
    assert key == ECID  # the first id of the first namespace
    # Remembered apart from the identities of profile updates (contract section 1).
    assert world.tables.profiles["p1"] == {
        "attributes": {},
        "identityMap": None,
        "rememberedIdentityMap": ECID_MAP,
    }


# -- remembered identities (contract sections 1 and 3) --------------------------------------


async def test_an_exit_carries_the_identities_its_entry_carried(world: World) -> None:
    """The issue-14 case: the exit, without identities, on the entry's shard."""
    await world.run(world.q("p1", SEG_A, "realized", T0, ECID_MAP))
    await world.run(world.q("p1", SEG_A, "exited", T1))
    [(entered, entry_key), (exited, exit_key)] = world.one
    assert ups(exited) == {SEG_A: entry(T1, "exited", name="Segment A")}
    assert entered["identityMap"] == exited["identityMap"] == ECID_MAP
    assert entry_key == exit_key == ECID


async def test_remembered_identities_serve_updates_and_the_deletion_then_go(
    world: World,
) -> None:
    await world.run(world.q("p1", SEG_A, "realized", T0, ECID_MAP))
    await world.run(world.update("p1", {"person": {"name": {"lastName": "Silva"}}}))
    await world.run(world.tombstone("p1"))
    [_, (updated, update_key), (deleted, delete_key)] = world.one
    assert updated["identityMap"] == deleted["identityMap"] == ECID_MAP
    assert update_key == delete_key == ECID
    assert ups(deleted)[SEG_A]["status"] == "exited"
    # A tombstone forgets them with the rest of the profile.
    assert "p1" not in world.tables.profiles
    await world.run(world.q("p1", SEG_A, "realized", T1))
    (again, again_key) = world.one[-1]
    assert again["identityMap"] == {}
    assert again_key == "p1"


async def test_the_profile_table_s_identities_win_over_remembered_ones(world: World) -> None:
    await world.run(world.q("p1", SEG_A, "realized", T0, ECID_MAP))
    await world.run(world.update("p1", identity_map=EMAIL_MAP))
    await world.run(world.q("p1", SEG_A, "exited", T1))
    [_, (updated, _), (exited, key)] = world.one
    assert updated["identityMap"] == exited["identityMap"] == EMAIL_MAP
    assert key == EMAIL
    # An empty map in the profile table holds no identities: the remembered serve again.
    await world.run(world.update("p1", identity_map={}))
    await world.run(world.q("p1", SEG_A, "realized", T2))
    (entered, entered_key) = world.one[-1]
    assert entered["identityMap"] == ECID_MAP
    assert entered_key == ECID


async def test_the_last_applied_qualification_with_identities_is_remembered(
    world: World,
) -> None:
    await world.run(world.q("p1", SEG_A, "realized", T1, ECID_MAP))
    # A duplicate is applied (it sets lastQualificationTime): its identities replace.
    await world.run(world.q("p1", SEG_A, "existing", T1, EMAIL_MAP))
    # A stale event is not applied: its identities are not remembered.
    await world.run(world.q("p1", SEG_A, "realized", T0, FULL_MAP))
    # An event without identities forgets nothing.
    await world.run(world.q("p1", SEG_A, "exited", T2))
    [(entered, _), (exited, key)] = world.one
    assert entered["identityMap"] == ECID_MAP
    assert exited["identityMap"] == EMAIL_MAP
    assert key == EMAIL
    assert world.tables.profiles["p1"]["rememberedIdentityMap"] == EMAIL_MAP


async def test_remembered_identities_in_one_batch_as_across_batches(world: World) -> None:
    messages = [
        world.q("p1", SEG_A, "realized", T0, ECID_MAP),
        world.update("p1", {"person": {"name": {"lastName": "Silva"}}}),
        world.q("p1", SEG_A, "exited", T1),
    ]
    await world.run(*messages)
    assert [key for _, key in world.one] == [ECID, ECID, ECID]
    assert world.tables.profiles["p1"]["rememberedIdentityMap"] == ECID_MAP


async def test_identity_map_comes_from_the_event_for_a_profile_without_identities(
    world: World,
) -> None:
    await world.run(world.update("p1", {"personalEmail": {"address": "a@b.c"}}))
    await world.run(world.q("p1", SEG_A, "realized", T0, EMAIL_MAP))
    [(record, key)] = world.one
    assert record["identityMap"] == EMAIL_MAP
    assert record["personalEmail"] == {"address": "a@b.c"}
    assert key == EMAIL


async def test_identity_map_is_empty_without_any(world: World) -> None:
    await world.run(world.update("p1", {"person": {"name": {"lastName": "Silva"}}}))
    await world.run(world.q("p1", SEG_A, "realized", T0))
    [(record, key)] = world.one
    assert record["identityMap"] == {}
    assert key == "p1"


@pytest.mark.parametrize(
    ("identity_map", "key_one", "key_two"),
    [
        (FULL_MAP, ECID, EMAIL),
        (ECID_MAP, ECID, "p1"),
        (EMAIL_MAP, EMAIL, EMAIL),
        ({"other": [{"id": "x"}]}, "p1", "p1"),
        ({"ecid": [], "email_lc_sha256": [{"id": EMAIL}]}, EMAIL, EMAIL),
    ],
)
async def test_partition_key_follows_each_destinations_namespaces(
    world: World, identity_map: dict[str, Any], key_one: str, key_two: str
) -> None:
    await world.run(world.q("p1", SEG_B, "realized", T0, identity_map))
    assert [key for _, key in world.one] == [key_one]
    assert [key for _, key in world.two] == [key_two]


async def test_a_long_partition_key_is_hashed(world: World) -> None:
    long_id = "e" * 300
    await world.run(world.q("p1", SEG_A, "realized", T0, {"ecid": [{"id": long_id}]}))
    [(_, key)] = world.one
    assert key == hashlib.sha256(long_id.encode()).hexdigest()


# -- profile updates --------------------------------------------------------------------------


async def member_of(world: World, *segments: str) -> None:
    await world.run(world.update("p1", ANA, FULL_MAP))
    for segment in segments:
        await world.run(world.q("p1", segment, "realized", T0))
    world.clear()


async def test_mapped_attribute_change_exports_when_member(world: World) -> None:
    await member_of(world, SEG_A)
    report = await world.run(world.update("p1", {"person": {"name": {"lastName": "Souza"}}}))
    assert world.one == [
        (
            {
                "person": {"name": {"lastName": "Souza"}},
                "personalEmail": {"address": "ana@example.com"},
                "segmentMembership": {"ups": {SEG_A: entry(T0, "existing", name="Segment A")}},
                "identityMap": FULL_MAP,
            },
            ECID,
        )
    ]
    assert world.two == []  # lastName is not its attribute, and p1 is in none of its segments
    assert report.outcomes == {"exported": 1}
    stored = world.tables.profiles["p1"]
    assert stored["attributes"]["person"]["name"] == {"firstName": "Ana", "lastName": "Souza"}


async def test_attribute_change_goes_only_to_the_destination_mapping_it(world: World) -> None:
    await member_of(world, SEG_B)
    await world.run(world.update("p1", {"loyalty": {"tier": "platinum"}}))
    assert world.one == []  # loyalty.tier is not selected by destination one
    [(record, key)] = world.two
    assert record["loyalty"] == {"tier": "platinum"}
    assert ups(record) == {SEG_B: entry(T0, "existing", **B_TIMESTAMPS)}
    assert key == EMAIL


async def test_mapped_attribute_change_needs_membership_of_that_destination(world: World) -> None:
    await member_of(world, SEG_A)  # a member of destination one only
    report = await world.run(world.update("p1", {"loyalty": {"tier": "platinum"}}))
    assert world.one == world.two == []
    assert report.outcomes == {"no_export": 1}
    assert world.tables.profiles["p1"]["attributes"]["loyalty"]["tier"] == "platinum"


async def test_attribute_change_of_a_profile_in_no_segment_exports_nothing(world: World) -> None:
    await member_of(world)
    await world.run(world.update("p1", {"person": {"name": {"lastName": "Souza"}}}))
    assert world.one == world.two == []


async def test_exited_segments_are_not_exported_with_an_update(world: World) -> None:
    await member_of(world, SEG_A, SEG_B)
    await world.run(world.q("p1", SEG_A, "exited", T1))
    world.clear()
    await world.run(world.update("p1", {"person": {"name": {"lastName": "Souza"}}}))
    [(record, _)] = world.one
    assert ups(record) == {SEG_B: entry(T0, "existing", name="Segment B")}


async def test_unmapped_attribute_change_exports_nothing(world: World) -> None:
    await member_of(world, SEG_A, SEG_B)
    report = await world.run(world.update("p1", {"person": {"name": {"firstName": "Anna"}}}))
    assert world.one == world.two == []
    assert report.outcomes == {"no_export": 1}
    assert world.tables.profiles["p1"]["attributes"]["person"]["name"]["firstName"] == "Anna"


async def test_identical_update_exports_nothing(world: World) -> None:
    await member_of(world, SEG_A, SEG_B)
    before = world.tables.snapshot()
    report = await world.run(world.update("p1", ANA, FULL_MAP))
    assert world.one == world.two == []
    assert report.outcomes == {"no_export": 1}
    assert world.tables.writes == []
    assert world.tables.snapshot() == before


async def test_empty_update_exports_nothing(world: World) -> None:
    await member_of(world, SEG_A)
    report = await world.run(world.update("p1"))
    assert world.one == world.two == []
    assert report.outcomes == {"no_export": 1}


async def test_identity_map_change_exports_to_every_destination_where_member(
    world: World,
) -> None:
    await member_of(world, SEG_A, SEG_B)
    new_map = {"ecid": [{"id": "new-ecid"}], "email_lc_sha256": [{"id": "new-email"}]}
    report = await world.run(world.update("p1", identity_map=new_map))
    [(one, key_one)] = world.one
    [(two, key_two)] = world.two
    assert one["identityMap"] == two["identityMap"] == new_map
    assert (key_one, key_two) == ("new-ecid", "new-email")
    assert ups(one) == {
        SEG_A: entry(T0, "existing", name="Segment A"),
        SEG_B: entry(T0, "existing", name="Segment B"),
    }
    assert ups(two) == {SEG_B: entry(T0, "existing", **B_TIMESTAMPS)}
    assert report.exports == 2
    assert world.tables.profiles["p1"]["identityMap"] == new_map


async def test_identity_map_change_skips_destinations_without_membership(world: World) -> None:
    await member_of(world, SEG_A)
    await world.run(world.update("p1", identity_map=ECID_MAP))
    assert len(world.one) == 1
    assert world.two == []


async def test_null_leaf_removes_the_attribute(world: World) -> None:
    await member_of(world, SEG_A)
    await world.run(world.update("p1", {"person": {"name": {"lastName": None}}}))
    [(record, _)] = world.one
    assert record["personalEmail"] == {"address": "ana@example.com"}
    assert "person" not in record
    stored = world.tables.profiles["p1"]["attributes"]
    assert stored["person"] == {"name": {"firstName": "Ana"}}


async def test_update_of_attributes_seen_by_later_qualifications(world: World) -> None:
    await world.run(world.update("p1", {"personalEmail": {"address": "a@b.c"}}, EMAIL_MAP))
    await world.run(world.q("p1", SEG_A, "realized", T0, ECID_MAP))
    [(record, key)] = world.one
    assert record["personalEmail"] == {"address": "a@b.c"}
    assert key == EMAIL


async def test_a_change_between_equal_comparing_values_is_exported_and_stored(
    world: World,
) -> None:
    await world.run(world.update("p1", {"loyalty": {"tier": 1}}))
    await world.run(world.q("p1", SEG_B, "realized", T0))
    world.clear()
    await world.run(world.update("p1", {"loyalty": {"tier": True}}))
    [(record, _)] = world.two
    assert record["loyalty"]["tier"] is True
    assert world.tables.profiles["p1"]["attributes"]["loyalty"]["tier"] is True


# -- tombstones ------------------------------------------------------------------------------


async def test_tombstone_exits_every_segment_once_and_removes_state(world: World) -> None:
    await world.run(world.update("p1", ANA, FULL_MAP))
    await world.run(world.q("p1", SEG_A, "realized", T0))
    await world.run(world.q("p1", SEG_B, "existing", T1))
    await world.run(world.q("p1", SEG_C, "realized", T0))
    await world.run(world.q("p1", SEG_C, "exited", T1))  # no longer a member
    await world.run(world.q("p1", UNMAPPED, "realized", T0))
    world.clear()
    report = await world.run(world.tombstone("p1"))
    assert world.one == [
        (
            {
                "person": {"name": {"lastName": "Silva"}},
                "personalEmail": {"address": "ana@example.com"},
                "segmentMembership": {
                    "ups": {
                        SEG_A: entry(T0, "exited", name="Segment A"),
                        SEG_B: entry(T1, "exited", name="Segment B"),
                    }
                },
                "identityMap": FULL_MAP,
            },
            ECID,
        )
    ]
    assert world.two == [
        (
            {
                "loyalty": {"tier": "gold"},
                "segmentMembership": {"ups": {SEG_B: entry(T1, "exited", **B_TIMESTAMPS)}},
                "identityMap": FULL_MAP,
            },
            EMAIL,
        )
    ]
    assert report.outcomes == {"exported": 1}
    assert "p1" not in world.tables.profiles
    assert "p1" not in world.tables.memberships
    # Once: a second tombstone has nothing left to export.
    world.clear()
    report = await world.run(world.tombstone("p1"))
    assert world.one == world.two == []
    assert report.outcomes == {"deleted": 1}


async def test_tombstone_of_a_member_without_profile(world: World) -> None:
    await world.run(world.q("p1", SEG_A, "realized", T0, ECID_MAP))
    world.clear()
    await world.run(world.tombstone("p1"))
    [(record, key)] = world.one
    assert record == {
        "segmentMembership": {"ups": {SEG_A: entry(T0, "exited", name="Segment A")}},
        "identityMap": ECID_MAP,  # remembered from its qualification
    }
    assert key == ECID
    assert world.tables.memberships == {}


async def test_tombstone_of_an_unknown_profile(world: World) -> None:
    report = await world.run(world.tombstone("nobody"))
    assert world.one == world.two == []
    assert report.outcomes == {"deleted": 1}
    assert world.dead_letters.sent == []
    assert world.tables.profiles == world.tables.memberships == {}


async def test_a_deleted_profile_starts_again(world: World) -> None:
    await member_of(world, SEG_A)
    await world.run(world.tombstone("p1"))
    world.clear()
    await world.run(world.q("p1", SEG_A, "realized", T1, EMAIL_MAP))
    [(record, key)] = world.one
    assert record == {
        "segmentMembership": {"ups": {SEG_A: entry(T1, "realized", name="Segment A")}},
        "identityMap": EMAIL_MAP,
    }
    assert key == EMAIL


async def test_qualification_after_a_tombstone_in_one_batch_is_stored(world: World) -> None:
    await member_of(world, SEG_A)
    await world.run(world.tombstone("p1"), world.q("p1", SEG_A, "realized", T1))
    assert [ups(r)[SEG_A]["status"] for r, _ in world.one] == ["exited", "realized"]
    assert world.tables.states("p1") == {SEG_A: SegmentState(True, at(T1))}
    world.clear()
    await world.run(world.q("p1", SEG_A, "exited", T2))
    assert [ups(r)[SEG_A]["status"] for r, _ in world.one] == ["exited"]


# -- several events in one batch ---------------------------------------------------------------


async def test_events_of_one_profile_in_one_batch_apply_in_order(world: World) -> None:
    report = await world.run(
        world.q("p1", SEG_A, "realized", T0, ECID_MAP),
        world.q("p1", SEG_A, "exited", T1, ECID_MAP),
    )
    assert world.one == [
        (
            {
                "segmentMembership": {"ups": {SEG_A: entry(T0, "realized", name="Segment A")}},
                "identityMap": ECID_MAP,
            },
            ECID,
        ),
        (
            {
                "segmentMembership": {"ups": {SEG_A: entry(T1, "exited", name="Segment A")}},
                "identityMap": ECID_MAP,
            },
            ECID,
        ),
    ]
    assert report.outcomes == {"exported": 2}
    assert world.tables.states("p1") == {SEG_A: SegmentState(False, at(T1))}
    # The state is written once, after the batch, by its last event's scope
    # (the profile for the identities remembered from the events).
    assert [w[:2] for w in world.tables.writes] == [("memberships", "p1"), ("profile", "p1")]
    assert {w[3] for w in world.tables.writes} == {f"{QUALIFICATIONS}@101"}


async def test_stale_and_duplicate_within_one_batch(world: World) -> None:
    report = await world.run(
        world.q("p1", SEG_A, "realized", T1),
        world.q("p1", SEG_A, "exited", T0),  # older than the one before it
        world.q("p1", SEG_A, "existing", T2),
    )
    assert [ups(r)[SEG_A]["status"] for r, _ in world.one] == ["realized"]
    assert report.outcomes == {"exported": 1, "stale": 1, "duplicate": 1}
    assert world.tables.states("p1") == {SEG_A: SegmentState(True, at(T2))}


async def test_update_then_qualification_in_one_batch(world: World) -> None:
    await world.run(
        world.update("p1", ANA, FULL_MAP),
        world.q("p1", SEG_B, "realized", T0),
        world.update("p1", {"person": {"name": {"lastName": "Souza"}}}),
    )
    names = [r.get("person", {}).get("name", {}).get("lastName") for r, _ in world.one]
    assert names == ["Silva", "Souza"]
    assert [r["loyalty"] for r, _ in world.two] == [{"tier": "gold"}]
    assert world.tables.profiles["p1"]["attributes"]["person"]["name"]["lastName"] == "Souza"


async def test_interleaved_profiles_keep_their_own_order(world: World) -> None:
    messages = []
    for n, time in enumerate([T0, T1, T2]):
        status = "exited" if n % 2 else "realized"
        for profile in ("p1", "p2", "p3"):
            messages.append(world.q(profile, SEG_A, status, time))
    await world.run(*messages)
    for profile in ("p1", "p2", "p3"):
        statuses = [ups(r)[SEG_A]["status"] for r, key in world.one if key == profile]
        assert statuses == ["realized", "exited", "realized"]
    for call in world.transports[0].calls:
        keys = [key for _, key in call]
        assert len(keys) == len(set(keys))


# -- bad events and rejected records: dead letters ---------------------------------------------


def qualification_body(**fields: Any) -> bytes:
    body = {"profileId": "p1", "segmentId": SEG_A, "status": "realized", "qualificationTime": T0}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


@pytest.mark.parametrize(
    ("topic", "key", "value", "reason"),
    [
        (QUALIFICATIONS, b"p1", b"{not json", "invalid_json"),
        (QUALIFICATIONS, b"p1", b"[1, 2]", "not_an_object"),
        (QUALIFICATIONS, b"p2", qualification_body(), "key_mismatch"),
        (QUALIFICATIONS, None, qualification_body(), "missing_key"),
        (QUALIFICATIONS, b"p1", None, "missing_value"),
        (QUALIFICATIONS, b"p1", qualification_body(segmentId=None), "missing_field"),
        (QUALIFICATIONS, b"p1", qualification_body(qualificationTime=None), "missing_field"),
        (QUALIFICATIONS, b"p1", qualification_body(status=None), "missing_field"),
        (QUALIFICATIONS, b"p1", qualification_body(status="gone"), "invalid_status"),
        (QUALIFICATIONS, b"p1", qualification_body(qualificationTime="today"), "invalid_time"),
        (PROFILES, b"p1", b"{not json", "invalid_json"),
        (PROFILES, b"p2", b'{"profileId": "p1"}', "key_mismatch"),
        (PROFILES, b"p1", b'{"profileId": "p1", "attributes": [1]}', "invalid_field"),
        (PROFILES, None, None, "missing_key"),
    ],
)
async def test_bad_events_are_dead_lettered(
    world: World, topic: str, key: bytes | None, value: bytes | None, reason: str
) -> None:
    bad = InputMessage(topic, 7, 4242, key, value)
    good = world.q("p3", SEG_A, "realized", T0)
    report = await world.run(bad, good)  # never raises
    [(letter_key, letter)] = world.dead_letters.sent
    assert letter_key == key
    assert letter["reason"] == reason
    assert letter["detail"]
    assert letter["source"] == {"topic": topic, "partition": 7, "offset": 4242}
    assert letter["value"] == (value.decode() if value is not None else None)
    assert isinstance(letter["failedAt"], str)
    assert report.outcomes == {"dead_lettered": 1, "exported": 1}
    assert report.dead_letters == 1
    assert [key for _, key in world.one] == ["p3"]  # the batch went on
    assert "p1" not in world.tables.memberships


async def test_a_value_that_is_not_utf8_is_kept_in_base64(world: World) -> None:
    await world.run(InputMessage(QUALIFICATIONS, 0, 1, b"p1", b"\xff\xfe"))
    [(_, letter)] = world.dead_letters.sent
    assert letter["reason"] == "invalid_json"
    assert letter["valueBase64"] == "//4="
    assert "value" not in letter


async def test_records_the_writer_rejects_are_dead_lettered() -> None:
    world = World()
    world.transports[0].max_record_bytes = 150
    await world.writers[0].start()
    report = await world.run(world.q("p1", SEG_B, "realized", T0, FULL_MAP))
    assert world.one == []
    assert len(world.two) == 1  # the other destination is unaffected
    [(key, letter)] = world.dead_letters.sent
    assert key == b"p1"
    assert letter["reason"] == "record_too_large"
    assert "150" in letter["detail"]
    assert letter["destination"] == "Dest One"
    assert letter["stream"] == "stream-one"
    assert letter["partitionKey"] == ECID
    assert letter["source"] == {"topic": QUALIFICATIONS, "partition": 3, "offset": 100}
    assert ups(orjson.loads(letter["value"]))[SEG_B]["status"] == "realized"
    assert report.exports == 1
    assert report.dead_letters == 1
    # Dead-lettered counts as done: the state moves on.
    assert world.tables.states("p1") == {SEG_B: SegmentState(True, at(T0))}


# -- CONTRACT section 4: at least once ------------------------------------------------------------


async def test_tables_are_written_only_after_the_writers_returned(world: World) -> None:
    await world.run(world.update("p2", ANA, FULL_MAP))
    world.clear()
    writes_during_puts: list[int] = []
    for transport in world.transports:
        transport.on_call = lambda: writes_during_puts.append(len(world.tables.writes))
    await world.run(
        world.q("p1", SEG_A, "realized", T0),
        InputMessage(QUALIFICATIONS, 0, 9, b"p1", b"garbage"),
        world.q("p2", SEG_B, "realized", T0),
        world.update("p2", {"person": {"name": {"lastName": "Souza"}}}),
        world.tombstone("p2"),
    )
    # p2's records share a key: three calls in destination one, two in two.
    assert writes_during_puts == [0, 0, 0, 0, 0]
    assert world.dead_letters.table_writes_at_send == [0]
    assert world.tables.writes  # and written after
    assert "p2" not in world.tables.profiles


async def test_a_crash_while_putting_loses_nothing(world: World) -> None:
    await member_of(world, SEG_A)
    before = world.tables.snapshot()
    batch = [
        world.q("p1", SEG_A, "exited", T1),
        world.q("p1", SEG_B, "realized", T1),
        world.q("p2", SEG_C, "realized", T1),
        world.update("p1", {"person": {"name": {"lastName": "Souza"}}}),
        InputMessage(QUALIFICATIONS, 0, 9, b"p1", b"garbage"),
    ]
    world.transports[1].crash = True  # destination one is put, then the worker dies
    with pytest.raises(Crash):
        await world.run(*batch)
    assert len(world.one) == 3
    assert world.tables.writes == []
    assert world.tables.snapshot() == before
    assert world.dead_letters.sent == []  # neither sent: the batch is not done

    # The restarted worker sees the same events again, and exports them again.
    world.transports[1].crash = False
    world.clear()
    report = await world.run(*batch)
    assert [ups(r) for r, _ in world.one] == [
        {SEG_A: entry(T1, "exited", name="Segment A")},
        {SEG_B: entry(T1, "realized", name="Segment B")},
        {SEG_B: entry(T1, "existing", name="Segment B")},
    ]
    assert [(ups(r), key) for r, key in world.two] == [
        ({SEG_B: entry(T1, "realized", **B_TIMESTAMPS)}, EMAIL),
        ({SEG_C: entry(T1, "realized")}, "p2"),
    ]
    assert report.exports == 5
    assert len(world.dead_letters.sent) == 1
    assert world.tables.states("p1") == {
        SEG_A: SegmentState(False, at(T1)),
        SEG_B: SegmentState(True, at(T1)),
    }


async def test_a_crash_in_one_destination_leaves_state_untouched(world: World) -> None:
    world.transports[0].crash = True
    batch = [world.q("p1", SEG_B, "realized", T0), world.tombstone("p2")]
    with pytest.raises(Crash):
        await world.run(*batch)
    # The other destination is put at the same time, and its put runs to its end.
    assert len(world.two) == 1
    assert world.tables.writes == []
    world.transports[0].crash = False
    await world.run(*batch)
    assert len(world.one) == 1
    assert len(world.two) == 2  # again: the batch was not done
    assert world.tables.states("p1") == {SEG_B: SegmentState(True, at(T0))}


async def test_stored_values_are_never_mutated_in_place(world: World) -> None:
    await member_of(world, SEG_A, SEG_B)
    stored_profile = world.tables.profiles["p1"]
    stored_memberships = world.tables.memberships["p1"]
    kept = copy.deepcopy((stored_profile, stored_memberships))
    world.transports[1].crash = True
    with pytest.raises(Crash):
        await world.run(
            world.update("p1", {"person": {"name": {"lastName": None}}, "x": 1}, EMAIL_MAP),
            world.q("p1", SEG_B, "exited", T1),
            world.tombstone("p1"),
        )
    assert (stored_profile, stored_memberships) == kept


# -- hostile input: applied whole, or one dead letter and no effect (issue 11) -----------------


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def deep_message(world: World, topic: str, body: dict[str, Any]) -> InputMessage:
    # The standard library's encoder: orjson refuses to encode what these tests send.
    return world.message(topic, body["profileId"].encode(), json.dumps(body).encode())


async def test_a_dead_lettered_qualification_changes_no_state(world: World) -> None:
    # The record cannot be encoded (orjson stops at 255 levels); the membership
    # was formerly stored anyway, so a clean replay of the event exported nothing.
    deep = {"ecid": [{"id": ECID, "x": nested(300)}]}
    body = {"profileId": "p1", "segmentId": SEG_A, "status": "realized", "qualificationTime": T0}
    report = await world.run(deep_message(world, QUALIFICATIONS, {**body, "identityMap": deep}))
    [(_, letter)] = world.dead_letters.sent
    assert letter["reason"] == "unencodable"
    assert report.outcomes == {"dead_lettered": 1}
    assert "p1" not in world.tables.memberships
    world.clear()
    await world.run(world.q("p1", SEG_A, "realized", T0, ECID_MAP))
    assert len(world.one) == 1


async def test_a_deep_profile_update_is_dead_lettered_and_the_batch_goes_on(world: World) -> None:
    await world.run(world.update("p1", ANA, ECID_MAP))
    before = world.tables.snapshot()
    world.clear()
    report = await world.run(
        deep_message(world, PROFILES, {"profileId": "p1", "attributes": {"loyalty": nested(300)}}),
        world.q("p1", SEG_A, "realized", T0),
    )
    [(_, letter)] = world.dead_letters.sent
    assert letter["reason"] == "unencodable"
    assert report.outcomes == {"dead_lettered": 1, "exported": 1}
    [(record, _)] = world.one
    assert record["person"] == {"name": {"lastName": "Silva"}}  # the update did not apply
    assert world.tables.snapshot()[0] == before[0]


async def test_state_over_the_changelog_limit_is_dead_lettered(world: World) -> None:
    big = "x" * 600_000
    await world.run(world.update("p1", {"a": big}))
    report = await world.run(world.update("p1", {"b": big}))
    [(_, letter)] = world.dead_letters.sent
    assert letter["reason"] == "state_too_large"
    assert report.outcomes == {"dead_lettered": 1}
    assert world.tables.profiles["p1"]["attributes"] == {"a": big}


async def test_the_state_limit_leaves_room_for_kafkas_record_headers(world: World) -> None:
    # A profile a few bytes under 1,000,000 once stored was formerly accepted,
    # and Faust's producer (max request 1,000,000, headers included) refused
    # its changelog message: the batch could only be retried.
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from faust.utils import json as faust_json

    def stored_size(attributes: dict[str, Any]) -> int:
        value = faust_json.dumps({"attributes": attributes, "identityMap": None})
        key = faust_json.dumps("p1")
        return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []))

    overhead = stored_size({"a": ""})
    report = await world.run(world.update("p1", {"a": "x" * (1_000_000 - overhead + 1)}))
    [(_, letter)] = world.dead_letters.sent
    assert letter["reason"] == "state_too_large"
    assert report.outcomes == {"dead_lettered": 1}
    # The largest state let through fits Faust's producer limit.
    largest = "x" * (MAX_STATE_BYTES - len(b'p1{"attributes":{"a":""},"identityMap":null}'))
    assert stored_size({"a": largest}) <= 1_000_000
    world.clear()
    report = await world.run(world.update("p1", {"a": largest}))
    assert report.outcomes == {"no_export": 1}
    assert world.dead_letters.sent == []


@contextlib.contextmanager
def build_replaced(world: World, index: int, build: Callable[..., Any]) -> Iterator[None]:
    """Destination ``index`` builds its records with ``build(original_format, *args)``."""
    destination = world.processor._destinations[index]
    original = destination.format

    class Replaced:
        def __getattr__(self, name: str) -> Any:
            return getattr(original, name)

        def build(self, *args: Any) -> Any:
            return build(original, *args)

    destination.format = Replaced()  # type: ignore[assignment]
    try:
        yield
    finally:
        destination.format = original


async def test_a_failure_undoes_the_events_exports_too(world: World) -> None:
    # Destination one's record builds, destination two's fails: neither goes.
    await world.run(world.update("p1", {"loyalty": {"tier": "gold"}}, FULL_MAP))
    world.clear()
    calls = 0

    def failing(original: Any, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        raise ValueError("boom")

    with build_replaced(world, 1, failing):
        report = await world.run(world.q("p1", SEG_B, "realized", T0))
    assert calls == 1
    assert world.one == world.two == []
    [(_, letter)] = world.dead_letters.sent
    assert letter["reason"] == "internal_error"
    assert "ValueError" in letter["detail"]
    assert report.outcomes == {"dead_lettered": 1}
    assert "p1" not in world.tables.memberships


async def test_built_records_are_delivered_before_the_budget_is_exceeded() -> None:
    # 300 qualifications for a profile with a 100 KB selected attribute, 2
    # destinations: formerly every record was held until the end of the batch.
    from worker.budget import MemoryBudget

    world = World()
    memory = MemoryBudget(1_000_000)
    world.processor._memory = memory
    await world.run(world.update("p1", {"person": {"name": {"lastName": "x" * 100_000}}}))
    world.clear()
    built = 0

    def counting(original: Any, *args: Any) -> Any:
        nonlocal built
        built += 1
        return original.build(*args)

    # Records built and not yet accepted, each time the stream is called.
    held: list[int] = []
    transport = world.transports[0]
    transport.on_call = lambda: held.append(built - sum(len(call) for call in transport.calls))
    events = [
        world.q(
            "p1",
            SEG_A,
            "realized" if i % 2 == 0 else "exited",
            f"2020-05-25T21:{i // 60:02d}:{i % 60:02d}Z",
        )
        for i in range(300)
    ]
    with build_replaced(world, 0, counting):
        report = await world.run(*events)
    assert report.exports == 300
    assert len(world.one) == 300
    # Within the output half of the budget plus one event's record (100 KB each).
    assert max(held) * 100_000 <= memory.share + 101_000
    assert memory.used == 0


async def test_a_record_larger_than_the_budget_is_dead_lettered() -> None:
    from worker.budget import MemoryBudget

    world = World()
    world.processor._memory = MemoryBudget(50_000)
    await world.run(world.update("p1", {"person": {"name": {"lastName": "x" * 60_000}}}))
    world.clear()
    await world.run(world.q("p1", SEG_A, "realized", T0))
    assert world.one == []
    [(_, letter)] = world.dead_letters.sent
    assert letter["reason"] == "record_too_large"
    assert "memory budget" in letter["detail"]
    assert "25000 bytes" in letter["detail"]  # half of the budget is for records
    assert world.processor._memory.used == 0
