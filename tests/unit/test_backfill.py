"""Backfill and re-send (worker.backfill) end to end with fakes.

Real ``RecordFormat`` and ``KinesisWriter`` objects put into the fake
transports of test_pipeline; the tables are its dict-backed fake, extended
with the activations and the members by partition; the clock, the rebalance
count and the assignment are injected, so pacing, backoff and rebalances are
deterministic.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import orjson
import pydantic
import pytest

from tests.support import FakeClock, qualification
from tests.unit.test_pipeline import (
    ANA,
    B_TIMESTAMPS,
    ECID,
    ECID_MAP,
    EMAIL,
    EMAIL_MAP,
    FULL_MAP,
    QUALIFICATIONS,
    SEG_A,
    SEG_B,
    SEG_C,
    T0,
    T1,
    T2,
    UNMAPPED,
    FakeDeadLetters,
    FakeTables,
    FakeTransport,
    at,
    entry,
    ups,
)
from worker.activation import Activation, Job, activation_from_json, activation_to_json
from worker.backfill import (
    PLANNED,
    Activations,
    ActivationTables,
    Backfiller,
    Deferred,
    Holds,
    NotPlanned,
    new_backfill_id,
)
from worker.batching import is_outage
from worker.budget import MemoryBudget
from worker.control import encode_resend
from worker.errors import RetryLater
from worker.kinesis import KinesisWriter, TransportError, WriterConfig
from worker.membership import SegmentState, memberships_to_json
from worker.pipeline import BatchProcessor, DeadLetterSink, Destination, InputMessage, Requests
from worker.settings import Settings
from worker.vocabulary import JobKind

ONE, TWO = "Dest One", "Dest Two"
NAMES = {SEG_A: "Segment A", SEG_B: "Segment B", SEG_C: "Segment C"}
B_SETTINGS = {
    "created_at": 1590000000000,
    "updated_at": 1590000001000,
    "mapping_created_at": 1590000002000,
    "mapping_updated_at": 1590000003000,
}
START = 1000.0  # the fake clock's start: any value, exactly representable steps below

# -- configuration --------------------------------------------------------------------------


def config(
    one: Sequence[str] = (SEG_A, SEG_B),
    two: Sequence[str] = (),
    *,
    limit: int = 0,
    share: float = 0.5,
) -> Settings:
    """Destination one as in test_pipeline (names on, ecid then email keys); destination
    two (timestamps on, email keys) only when it maps segments. ``limit`` is each
    destination's shard_records_per_s (0: backfill is not paced)."""
    destinations: list[dict[str, Any]] = [
        {
            "name": ONE,
            "stream": "stream-one",
            "region": "us-east-1",
            "include_segment_names": True,
            "partition_key_namespaces": ["ecid", "email_lc_sha256"],
            "segments": [{"id": s, "name": NAMES.get(s)} for s in one],
            "attributes": ["person.name.lastName", "personalEmail.address"],
            "backfill_share": share,
            "shard_records_per_s": limit,
        }
    ]
    if two:
        destinations.append(
            {
                "name": TWO,
                "stream": "stream-two",
                "region": "eu-west-1",
                "include_segment_timestamps": True,
                "partition_key_namespaces": ["email_lc_sha256"],
                "segments": [{"id": s, **(B_SETTINGS if s == SEG_B else {})} for s in two],
                "attributes": ["loyalty.tier"],
                "backfill_share": share,
                "shard_records_per_s": limit,
            }
        )
    return Settings.model_validate(
        {
            "kafka": {"qualifications_topic": QUALIFICATIONS, "profiles_topic": "profile-updates"},
            "destinations": destinations,
        }
    )


# -- fakes ----------------------------------------------------------------------------------


class Tables(FakeTables):
    """test_pipeline's tables plus what backfill needs: the partition of each
    profile (the scope of a message here is its partition number), the members
    of a partition, and the activations table.

    ``planned``: the partitions whose "planned" marker is stored, as a version
    that tracks activations leaves it: there a destination with no activation
    is new, and backfills. A partition without it is adopted (an upgrade).
    ``revoked``: partitions this worker's store no longer holds (the memory
    store drops a moved partition's keys once the rebalance's recovery is done).
    """

    def __init__(self, planned: Iterable[int] = (0, 1)) -> None:
        super().__init__()
        self.partition_of: dict[str, int] = {}
        self.activations: dict[tuple[str, int], dict[str, Any]] = {}
        # (destination, partition, value, flushes before the write)
        self.activation_writes: list[tuple[str, int, dict[str, Any] | None, int]] = []
        self.activation_reads: list[tuple[str, int]] = []
        self.member_id_calls: list[tuple[int, ...]] = []
        self.revoked: set[int] = set()
        for partition in planned:
            self.activations[PLANNED, partition] = {"since": 1.0}

    def stored_memberships(
        self, partitions: Collection[int]
    ) -> dict[int, list[tuple[str, dict[str, Any]]]]:
        self.member_id_calls.append(tuple(sorted(partitions)))
        # Any order, as the real tables: here the reverse of the ids' order.
        return {
            partition: sorted(
                (
                    (p, value)
                    for p, value in self.memberships.items()
                    if self.partition_of.get(p, 0) == partition and partition not in self.revoked
                ),
                reverse=True,
            )
            for partition in partitions
        }

    def _check_scope(self, profile_id: str, scope: Any) -> None:
        if profile_id in self.partition_of:
            assert scope == self.partition_of[profile_id], (profile_id, scope)

    def get_profile(self, profile_id: str, scope: Any) -> dict[str, Any] | None:
        self._check_scope(profile_id, scope)
        return None if scope in self.revoked else super().get_profile(profile_id, scope)

    def get_memberships(self, profile_id: str, scope: Any) -> dict[str, Any] | None:
        self._check_scope(profile_id, scope)
        return None if scope in self.revoked else super().get_memberships(profile_id, scope)

    def put_memberships(self, profile_id: str, value: dict[str, Any] | None, scope: Any) -> None:
        assert isinstance(scope, int)
        self.partition_of[profile_id] = scope
        super().put_memberships(profile_id, value, scope)

    def scope(self, partition: int) -> Any:
        return partition

    def get_activation(self, destination: str, partition: int) -> dict[str, Any] | None:
        self.activation_reads.append((destination, partition))
        if partition in self.revoked:
            return None
        stored = self.activations.get((destination, partition))
        return copy.deepcopy(stored)

    def put_activation(
        self, destination: str, value: dict[str, Any] | None, partition: int
    ) -> None:
        self.activation_writes.append((destination, partition, copy.deepcopy(value), self.flushes))
        if value is None:
            self.activations.pop((destination, partition), None)
        else:
            self.activations[destination, partition] = copy.deepcopy(value)

    # -- seeding and reading, for the tests

    def seed(
        self,
        profile_id: str,
        states: Mapping[str, tuple[bool, str]],
        *,
        partition: int = 0,
        profile: dict[str, Any] | None = None,
    ) -> None:
        self.memberships[profile_id] = memberships_to_json(
            {s: SegmentState(member, at(time)) for s, (member, time) in states.items()}
        )
        self.partition_of[profile_id] = partition
        if profile is not None:
            self.profiles[profile_id] = profile

    def store(self, destination: str, partition: int, activation: Activation) -> None:
        self.activations[destination, partition] = activation_to_json(activation)

    def stored(self, destination: str = ONE, partition: int = 0) -> Activation:
        return activation_from_json(self.activations[destination, partition])

    def writes_to(self, partition: int, since: int = 0) -> list[tuple[str, dict[str, Any] | None]]:
        """The activation writes to ``partition`` (from the ``since``-th write on)."""
        return [(d, v) for d, p, v, _ in self.activation_writes[since:] if p == partition]


class ShardedTransport(FakeTransport):
    """A stream of two open shards covering the hash key space."""

    async def list_shards(self, stream: str) -> list[dict[str, Any]]:
        half = 2**127
        return [
            {
                "ShardId": "shardId-000000000000",
                "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str(half - 1)},
                "SequenceNumberRange": {"StartingSequenceNumber": "1"},
            },
            {
                "ShardId": "shardId-000000000001",
                "HashKeyRange": {"StartingHashKey": str(half), "EndingHashKey": str(2**128 - 1)},
                "SequenceNumberRange": {"StartingSequenceNumber": "2"},
            },
        ]


class Clock(FakeClock):
    def __init__(self, now: float = START) -> None:
        super().__init__(now)


def _typed(
    tables: Tables, letters: FakeDeadLetters, activations: Activations
) -> tuple[ActivationTables, DeadLetterSink, Requests]:
    return tables, letters, activations  # mypy checks the fakes against the protocols


class Rig:
    """One worker's backfill: its destinations, tables, clock and assignment."""

    def __init__(
        self,
        settings: Settings,
        tables: Tables | None = None,
        *,
        partitions: Iterable[int] = (0,),
        partition_count: int | None = None,
        transports: Sequence[FakeTransport] | None = None,
        memory: MemoryBudget | None = None,
    ) -> None:
        """``partition_count``: the input topics' partitions (default: those owned)."""
        self.settings = settings
        self.clock = Clock()
        self.tables = tables if tables is not None else Tables()
        self.dead_letters = FakeDeadLetters(self.tables)
        self.transports = (
            list(transports)
            if transports is not None
            else [FakeTransport() for _ in settings.destinations]
        )
        writer_config = WriterConfig(backoff_base_s=0.0, backoff_max_s=0.0, fatal_retry_s=0.0)
        self.writers = [
            KinesisWriter(d.stream, t, writer_config)
            for d, t in zip(settings.destinations, self.transports, strict=True)
        ]
        self.destinations = [
            Destination(d, w) for d, w in zip(settings.destinations, self.writers, strict=True)
        ]
        self.generation = 1  # the rebalance count
        self.partitions = frozenset(partitions)
        self.rebalancing = False
        self.activations = Activations(
            self.destinations,
            self.tables,
            lambda: self.generation,
            clock=self.clock,
            rebalancing=lambda: self.rebalancing,
        )
        tables_, letters, requests = _typed(self.tables, self.dead_letters, self.activations)
        self.backfiller = Backfiller(
            self.destinations,
            self.activations,
            tables_,
            letters,
            self.assignment,
            partition_count if partition_count is not None else len(self.partitions),
            memory,
            clock=self.clock,
        )
        self.processor = BatchProcessor(
            settings, self.destinations, self.tables, letters, activations=requests
        )
        self.offset = 0
        self.writes_at_rebalance = 0  # activation writes before rebalance_during_put's

    def assignment(self) -> tuple[int, frozenset[int]] | None:
        return None if self.rebalancing else (self.generation, self.partitions)

    def rebalance(self, partitions: Iterable[int]) -> None:
        """A rebalance done: a new rebalance count, and the partitions owned now."""
        self.generation += 1
        self.partitions = frozenset(partitions)

    def records(self, index: int = 0) -> list[tuple[dict[str, Any], str]]:
        return self.transports[index].records()

    def keys(self, index: int = 0) -> list[str]:
        """The profile ids sent, where the records are keyed by profile id."""
        return [key for _, key in self.records(index)]

    def clear(self) -> None:
        for transport in self.transports:
            transport.calls.clear()
        self.dead_letters.sent.clear()

    async def batch(self, *messages: tuple[str, bytes | None, bytes | None, int]) -> None:
        """Live events through the pipeline, as the batch loop would run them."""
        inputs = []
        for topic, key, value, partition in messages:
            self.offset += 1
            inputs.append(InputMessage(topic, partition, self.offset, key, value, partition))
        await self.processor.process(inputs)


def q(
    profile: str,
    segment: str,
    status: str,
    time: str,
    identity_map: dict[str, Any] | None = None,
    partition: int = 0,
) -> tuple[str, bytes | None, bytes | None, int]:
    value = qualification(profile, segment, status, time, identity_map)
    return QUALIFICATIONS, profile.encode(), value, partition


def members(tables: Tables, count: int, *segments: str, partition: int = 0) -> list[str]:
    """``count`` members of ``segments`` without identities (keyed by their id)."""
    ids = [f"p{partition}-{n:04d}" for n in range(1, count + 1)]
    for profile_id in ids:
        tables.seed(profile_id, {s: (True, T0) for s in segments}, partition=partition)
    return ids


def unordered(records: list[tuple[dict[str, Any], str]]) -> list[tuple[dict[str, Any], str]]:
    return sorted(
        records, key=lambda r: orjson.dumps(r[0], option=orjson.OPT_SORT_KEYS) + r[1].encode()
    )


def existing(time: str, segment: str) -> dict[str, Any]:
    return entry(time, "existing", name=NAMES[segment])


# -- a destination never seen -----------------------------------------------------------------


async def test_a_new_destination_sends_each_member_once_as_existing() -> None:
    tables = Tables()
    # Members of both destinations' segments, with identities in the profile table.
    tables.seed(
        "p1",
        {SEG_A: (True, T0), SEG_B: (True, T1), UNMAPPED: (True, T2)},
        profile={"attributes": ANA, "identityMap": FULL_MAP},
    )
    # Remembered identities only: the records carry them.
    tables.seed(
        "p2",
        {SEG_B: (True, T2)},
        profile={"attributes": {}, "identityMap": None, "rememberedIdentityMap": EMAIL_MAP},
    )
    # No longer a member of A; a member of an unmapped segment only.
    tables.seed("p3", {SEG_A: (False, T1), UNMAPPED: (True, T0)})
    tables.seed("p4", {UNMAPPED: (True, T0)})
    # A member without a profile: no identities, keyed by its id.
    tables.seed("p5", {SEG_A: (True, T0)})
    # An empty identity map in the profile table: the remembered ones serve.
    tables.seed(
        "p6",
        {SEG_A: (True, T1)},
        profile={"attributes": {}, "identityMap": {}, "rememberedIdentityMap": ECID_MAP},
    )
    tables.seed("p7", {SEG_C: (True, T1)}, profile={"attributes": {"loyalty": {"tier": "x"}}})
    rig = Rig(config((SEG_A, SEG_B), (SEG_B, SEG_C)), tables)
    assert rig.backfiller.due_in() == 0.0  # a generation not planned yet
    await rig.backfiller.run()

    assert rig.records(0) == [
        (
            {
                "person": {"name": {"lastName": "Silva"}},
                "personalEmail": {"address": "ana@example.com"},
                "segmentMembership": {
                    "ups": {SEG_A: existing(T0, SEG_A), SEG_B: existing(T1, SEG_B)}
                },
                "identityMap": FULL_MAP,
            },
            ECID,
        ),
        (
            {"segmentMembership": {"ups": {SEG_B: existing(T2, SEG_B)}}, "identityMap": EMAIL_MAP},
            EMAIL,
        ),
        ({"segmentMembership": {"ups": {SEG_A: existing(T0, SEG_A)}}, "identityMap": {}}, "p5"),
        (
            {"segmentMembership": {"ups": {SEG_A: existing(T1, SEG_A)}}, "identityMap": ECID_MAP},
            ECID,
        ),
    ]
    # p1 and p2 share a partition key there: the writer sends them in two calls.
    assert unordered(rig.records(1)) == unordered(
        [
            (
                {
                    "loyalty": {"tier": "gold"},
                    "segmentMembership": {"ups": {SEG_B: entry(T1, "existing", **B_TIMESTAMPS)}},
                    "identityMap": FULL_MAP,
                },
                EMAIL,
            ),
            (
                {
                    "segmentMembership": {"ups": {SEG_B: entry(T2, "existing", **B_TIMESTAMPS)}},
                    "identityMap": EMAIL_MAP,
                },
                EMAIL,
            ),
            (
                {
                    "loyalty": {"tier": "x"},
                    "segmentMembership": {"ups": {SEG_C: entry(T1, "existing")}},
                    "identityMap": {},
                },
                "p7",
            ),
        ]
    )
    assert rig.dead_letters.sent == []
    for name, mapped, sent in ((ONE, {SEG_A, SEG_B}, 4), (TWO, {SEG_B, SEG_C}, 3)):
        stored = tables.stored(name)
        assert stored.active == mapped
        assert stored.since == START
        assert stored.jobs == ()
        [(job_id, done)] = stored.done
        assert job_id.startswith("backfill-")
        assert done == sent
    # Written, then made durable.
    assert tables.flushes >= 1
    assert tables.activation_writes[-1][3] < tables.flushes
    # Nothing left: nothing sent again. The jobs count as done until a rebalance.
    rig.clear()
    assert rig.backfiller.due_in() == 1.0
    await rig.backfiller.run()
    assert rig.records(0) == rig.records(1) == []
    assert rig.backfiller.progress() == {
        (0, JobKind.BACKFILL): (0, 4, 4),
        (1, JobKind.BACKFILL): (0, 3, 3),
    }
    # The partition's marker was there: no other write than the activations'.
    assert {(name, p) for name, p, *_ in tables.activation_writes} == {(ONE, 0), (TWO, 0)}


async def test_a_restart_does_not_backfill_again() -> None:
    tables = Tables()
    members(tables, 3, SEG_A)
    first = Rig(config((SEG_A, SEG_B)), tables)
    await first.backfiller.run()
    assert len(first.records()) == 3
    second = Rig(config((SEG_A, SEG_B)), tables)
    await second.backfiller.run()
    assert second.records() == []
    assert tables.stored().done == first.tables.stored().done


def test_the_backfill_setting_is_gone() -> None:
    """Adoption (below) replaced the destination setting ``backfill``: a
    configuration that still has it is refused, not silently read."""
    settings = config((SEG_A,)).model_dump(mode="json")
    settings["destinations"][0]["backfill"] = False
    with pytest.raises(pydantic.ValidationError, match="backfill"):
        Settings.model_validate(settings)


def test_backfill_job_ids() -> None:
    ids = {new_backfill_id() for _ in range(100)}
    assert len(ids) == 100
    for job_id in ids:
        assert job_id.startswith("backfill-")
        int(job_id.removeprefix("backfill-"), 16)
        assert len(job_id) == len("backfill-") + 12


# -- adoption: a partition planned for the first time ------------------------------------------


async def test_a_partition_never_planned_adopts_every_destination() -> None:
    """An upgrade from a version without activations (or a new app_id): what the
    tables hold was exported already, so each destination takes its mapping as
    it is and sends nothing; the partition is marked as planned."""
    tables = Tables(planned=())
    members(tables, 3, SEG_A, SEG_B, SEG_C)
    rig = Rig(config((SEG_A, SEG_B), (SEG_B, SEG_C), limit=0), tables)
    await rig.backfiller.run()
    assert rig.records(0) == rig.records(1) == []
    assert tables.activations == {
        (PLANNED, 0): {"since": START},
        (ONE, 0): activation_to_json(Activation(frozenset({SEG_A, SEG_B}), START)),
        (TWO, 0): activation_to_json(Activation(frozenset({SEG_B, SEG_C}), START)),
    }
    # Every destination at once, the marker last (a crash before it is durable
    # adopts again); once for the partition; then durable.
    assert [(name, p) for name, p, *_ in tables.activation_writes] == [
        (ONE, 0),
        (TWO, 0),
        (PLANNED, 0),
    ]
    assert tables.activation_writes[-1][3] < tables.flushes
    assert rig.backfiller.progress() == {}
    # Planned now: a restart (or another worker) reads it as it is, writing nothing.
    tables.activation_writes.clear()
    again = Rig(config((SEG_A, SEG_B), (SEG_B, SEG_C)), tables)
    await again.backfiller.run()
    assert again.records(0) == again.records(1) == []
    assert tables.activation_writes == []


async def test_adoption_is_per_partition() -> None:
    tables = Tables(planned=(1,))  # partition 0 was never planned; 1 was
    ids0 = members(tables, 2, SEG_A, partition=0)
    ids1 = members(tables, 2, SEG_A, partition=1)
    rig = Rig(config((SEG_A,)), tables, partitions=(0, 1))
    await rig.backfiller.run()
    assert rig.keys() == ids1  # a new destination in a planned partition: backfilled
    assert not set(ids0) & set(rig.keys())
    assert tables.stored(ONE, 0) == Activation(frozenset({SEG_A}), START)
    assert [sent for _, sent in tables.stored(ONE, 1).done] == [2]
    assert tables.activations[PLANNED, 0] == {"since": START}
    assert tables.activations[PLANNED, 1] == {"since": 1.0}  # not written again
    assert [p for name, p, *_ in tables.activation_writes if name == PLANNED] == [0]


async def test_a_planned_partition_backfills_a_destination_it_has_no_activation_of() -> None:
    tables = Tables(planned=(0,))
    members(tables, 2, SEG_A, SEG_C)
    tables.store(ONE, 0, Activation(frozenset({SEG_A}), 1.0))
    rig = Rig(config((SEG_A,), (SEG_C,)), tables)
    await rig.backfiller.run()
    assert rig.records(0) == []  # known, mapping unchanged
    assert len(rig.records(1)) == 2  # new: every member of its segments
    assert [sent for _, sent in tables.stored(TWO).done] == [2]
    assert PLANNED not in [name for name, *_ in tables.activation_writes]


async def test_a_segment_mapped_after_adoption_is_backfilled() -> None:
    tables = Tables(planned=())
    members(tables, 2, SEG_A)
    c_members = ["p0-0101", "p0-0102"]
    for profile_id in c_members:
        tables.seed(profile_id, {SEG_C: (True, T0)})
    first = Rig(config((SEG_A,)), tables)
    await first.backfiller.run()
    assert first.records() == []
    # The configuration maps C later: its members are sent, and only they.
    second = Rig(config((SEG_A, SEG_C)), tables)
    await second.backfiller.run()
    assert second.keys() == c_members
    stored = tables.stored()
    assert stored.active == {SEG_A, SEG_C}
    [(job_id, sent)] = stored.done
    assert job_id.startswith("backfill-")
    assert sent == 2
    assert [name for name, *_ in tables.activation_writes].count(PLANNED) == 1


async def test_a_destination_added_after_adoption_is_backfilled() -> None:
    tables = Tables(planned=())
    ids = members(tables, 3, SEG_A, SEG_B)
    first = Rig(config((SEG_A,)), tables)
    await first.backfiller.run()
    assert first.records() == []
    second = Rig(config((SEG_A,), (SEG_B,)), tables)
    await second.backfiller.run()
    assert second.records(0) == []
    assert len(second.records(1)) == len(ids)
    assert [sent for _, sent in tables.stored(TWO).done] == [3]


async def test_a_malformed_activation_is_planned_as_a_new_destination() -> None:
    """Its mapping is unknown: every member is sent again (duplicates, no loss)."""
    tables = Tables()
    ids = members(tables, 3, SEG_A)
    tables.activations[ONE, 0] = {"active": SEG_A, "since": "yesterday"}
    rig = Rig(config((SEG_A,)), tables)
    await rig.backfiller.run()
    assert rig.keys() == ids
    stored = tables.stored()
    assert stored.active == {SEG_A}
    assert [sent for _, sent in stored.done] == [3]


# -- what Activations holds, and for how long ----------------------------------------------------


def test_activations_are_held_for_one_rebalance_count() -> None:
    tables = Tables()
    rig = Rig(config((SEG_A,)), tables)
    rig.activations.begin(rig.generation, frozenset({0}))
    first = rig.activations.get(0, 0)
    [job] = first.jobs
    assert job.kind == JobKind.BACKFILL
    reads = len(tables.activation_reads)
    assert reads >= 1
    # Another worker owned the partition meanwhile and stored its own state.
    theirs = Activation(frozenset({SEG_A}), 5.0, done=((job.id, 7), ("resend-9", 2)))
    tables.store(ONE, 0, theirs)
    assert rig.activations.get(0, 0) == first  # held: not read again
    assert len(tables.activation_reads) == reads
    rig.generation += 1
    # A rebalance began: nothing is read or written until it is planned again.
    with pytest.raises(NotPlanned):
        rig.activations.get(0, 0)
    assert len(tables.activation_reads) == reads
    rig.activations.begin(rig.generation, frozenset({0}))
    assert rig.activations.get(0, 0) == theirs  # planned again: read again
    assert len(tables.activation_reads) > reads
    with pytest.raises(NotPlanned):
        rig.activations.get(0, 1)  # not owned in this assignment
    assert rig.activations.get(0, 0) == theirs


def test_a_new_rebalance_count_reads_the_planned_marker_again() -> None:
    tables = Tables(planned=())
    rig = Rig(config((SEG_A,)), tables)
    rig.activations.begin(rig.generation, frozenset({0}))
    assert rig.activations.get(0, 0) == Activation(frozenset({SEG_A}), START)  # adopted
    # Meanwhile the partition was planned elsewhere, and the activation dropped
    # (a value this worker could not read, say): a destination never seen again.
    del tables.activations[ONE, 0]
    rig.generation += 1
    rig.activations.begin(rig.generation, frozenset({0}))
    [job] = rig.activations.get(0, 0).jobs
    assert job.kind == JobKind.BACKFILL
    assert [name for name, *_ in tables.activation_writes].count(PLANNED) == 1


async def test_a_new_destination_without_members_finishes_its_job_at_once() -> None:
    rig = Rig(config((SEG_A,)))
    await rig.backfiller.run()
    stored = rig.tables.stored()
    assert stored.jobs == ()
    [(_, sent)] = stored.done
    assert sent == 0
    assert rig.records() == []


# -- configuration changes ----------------------------------------------------------------------


async def test_an_activation_already_active_sends_nothing() -> None:
    tables = Tables()
    members(tables, 3, SEG_A, SEG_B)
    tables.store(ONE, 0, Activation(frozenset({SEG_A, SEG_B}), 1.0, done=(("old", 3),)))
    rig = Rig(config((SEG_A, SEG_B)), tables)
    await rig.backfiller.run()
    assert rig.records() == []
    assert tables.stored() == Activation(frozenset({SEG_A, SEG_B}), 1.0, done=(("old", 3),))
    assert tables.activation_writes == []  # nothing to change, nothing written


async def test_a_newly_mapped_segment_sends_only_its_members_with_their_other_segments() -> None:
    tables = Tables()
    tables.seed("p1", {SEG_A: (True, T0)})  # not in C
    tables.seed("p2", {SEG_A: (True, T0), SEG_C: (True, T1)})  # in A and C
    tables.seed("p3", {SEG_C: (True, T2), UNMAPPED: (True, T0)})  # in C only
    tables.seed("p4", {SEG_B: (True, T0), SEG_C: (False, T1)})  # left C
    tables.store(ONE, 0, Activation(frozenset({SEG_A, SEG_B}), 1.0))
    rig = Rig(config((SEG_A, SEG_B, SEG_C)), tables)
    await rig.backfiller.run()
    assert rig.records() == [
        (
            {
                "segmentMembership": {
                    "ups": {SEG_A: existing(T0, SEG_A), SEG_C: existing(T1, SEG_C)}
                },
                "identityMap": {},
            },
            "p2",
        ),
        ({"segmentMembership": {"ups": {SEG_C: existing(T2, SEG_C)}}, "identityMap": {}}, "p3"),
    ]
    stored = tables.stored()
    assert stored.active == {SEG_A, SEG_B, SEG_C}
    assert stored.since == START
    assert stored.jobs == ()
    [(job_id, sent)] = stored.done
    assert job_id.startswith("backfill-")
    assert sent == 2


async def test_a_removed_segment_sends_nothing() -> None:
    tables = Tables()
    members(tables, 3, SEG_A, SEG_B)
    tables.store(ONE, 0, Activation(frozenset({SEG_A, SEG_B}), 1.0))
    rig = Rig(config((SEG_A,)), tables)
    await rig.backfiller.run()
    assert rig.records() == []
    assert tables.stored() == Activation(frozenset({SEG_A}), START)


async def test_a_removed_segment_drops_its_pending_job() -> None:
    tables = Tables()
    members(tables, 3, SEG_A, SEG_B)
    job = Job("backfill-b", JobKind.BACKFILL, frozenset({SEG_B}), 1.0, cursor="p0-0001", sent=1)
    tables.store(ONE, 0, Activation(frozenset({SEG_A, SEG_B}), 1.0, (job,)))
    rig = Rig(config((SEG_A,)), tables)
    await rig.backfiller.run()
    assert rig.records() == []
    assert tables.stored() == Activation(frozenset({SEG_A}), START, done=(("backfill-b", 1),))


# -- resuming, and the cursor -----------------------------------------------------------------


async def test_a_stored_job_resumes_after_its_cursor() -> None:
    tables = Tables()
    ids = members(tables, 5, SEG_A)
    job = Job("backfill-old", JobKind.BACKFILL, frozenset({SEG_A}), 1.0, cursor=ids[1], sent=2)
    tables.store(ONE, 0, Activation(frozenset({SEG_A, SEG_B}), 1.0, (job,)))
    rig = Rig(config((SEG_A, SEG_B)), tables)
    await rig.backfiller.run()
    assert rig.keys() == ids[2:]
    stored = tables.stored()
    assert stored.jobs == ()
    assert stored.done == (("backfill-old", 5),)


async def test_slices_store_the_cursor_and_total_between_them() -> None:
    tables = Tables()
    ids = members(tables, 25, SEG_A)
    # 100 records/s per shard, half of it, one shard: 50/s, slices of 10.
    rig = Rig(config((SEG_A,), limit=100), tables)
    await rig.backfiller.run()  # planned; the bucket starts empty
    assert rig.records() == []
    rig.clock.advance(0.25)
    await rig.backfiller.run()
    assert rig.keys() == ids[:10]
    [job] = tables.stored().jobs
    assert (job.cursor, job.sent, job.total) == (ids[9], 10, 25)
    # A new worker (or a restart) takes it from there.
    other = Rig(config((SEG_A,), limit=100), tables)
    await other.backfiller.run()
    other.clock.advance(0.25)
    await other.backfiller.run()
    assert other.keys() == ids[10:20]
    [job] = tables.stored().jobs
    assert (job.cursor, job.sent, job.total) == (ids[19], 20, 25)


def failing_transport(transport: FakeTransport) -> list[int]:
    """Makes ``transport`` fail like a reset connection; returns the calls it refused."""
    refused: list[int] = []

    def fail() -> None:
        refused.append(1)
        raise OSError(104, "Connection reset by peer")

    transport.on_call = fail
    return refused


async def test_the_cursor_moves_only_once_the_records_were_accepted() -> None:
    tables = Tables()
    ids = members(tables, 15, SEG_A)
    rig = Rig(config((SEG_A,), limit=100), tables)  # slices of 10
    await rig.backfiller.run()
    rig.clock.advance(0.25)
    await rig.backfiller.run()
    assert rig.keys() == ids[:10]
    [job] = tables.stored().jobs
    assert (job.cursor, job.sent) == (ids[9], 10)

    refused = failing_transport(rig.transports[0])
    rig.clock.advance(0.25)
    assert rig.backfiller.due_in() == 0.0
    await rig.backfiller.run()  # does not raise
    assert refused
    assert rig.keys() == ids[:10]
    [job] = tables.stored().jobs
    assert (job.cursor, job.sent) == (ids[9], 10)  # not moved
    assert rig.dead_letters.sent == []  # an outage, never the records' fault
    # Backing off: not due until then.
    wait = rig.backfiller.due_in()
    assert 0.0 < wait <= 1.0

    rig.transports[0].on_call = None
    rig.clock.advance(wait)
    assert rig.backfiller.due_in() == 0.0
    await rig.backfiller.run()
    assert rig.keys() == ids  # the rest, once each
    stored = tables.stored()
    assert stored.jobs == ()
    assert [sent for _, sent in stored.done] == [15]


async def test_an_outage_on_the_first_slice_sends_everything_later() -> None:
    tables = Tables()
    ids = members(tables, 3, SEG_A)
    rig = Rig(config((SEG_A,)), tables)
    failing_transport(rig.transports[0])
    await rig.backfiller.run()
    assert rig.records() == []
    [job] = tables.stored().jobs  # planned and stored, nothing sent
    assert (job.cursor, job.sent) == (None, 0)
    rig.transports[0].on_call = None
    rig.clock.advance(31.0)  # beyond any backoff
    assert rig.backfiller.due_in() == 0.0
    await rig.backfiller.run()
    assert rig.keys() == ids
    assert tables.stored().jobs == ()


async def test_a_failed_slice_backs_off_longer_each_time() -> None:
    tables = Tables()
    members(tables, 3, SEG_A)
    rig = Rig(config((SEG_A,)), tables)
    failing_transport(rig.transports[0])
    await rig.backfiller.run()
    first = rig.backfiller.due_in()
    rig.clock.advance(first)
    await rig.backfiller.run()
    second = rig.backfiller.due_in()  # at most 1: the loop looks again then
    assert 0.0 < first <= second <= 1.0
    rig.clock.advance(second)
    assert rig.backfiller.due_in() > 0.0  # the second backoff is longer than the first


# -- pacing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("transport", "size"), [(FakeTransport, 10), (ShardedTransport, 20)])
async def test_slices_are_paced_to_the_backfill_share_of_the_shards(
    transport: type[FakeTransport], size: int
) -> None:
    tables = Tables()
    ids = members(tables, 50, SEG_A)
    rig = Rig(config((SEG_A,), limit=100, share=0.5), tables, transports=[transport()])
    await rig.writers[0].start()
    # 0.5 * 100 records/s * shards; a slice is 0.2 s of that.
    rate = 0.5 * 100 * (size // 10)
    assert rig.writers[0].shard_count == (None if size == 10 else 2)

    await rig.backfiller.run()  # plans; the bucket starts empty
    assert rig.records() == []
    assert rig.backfiller.due_in() == pytest.approx(size / rate)  # 0.2 s
    rig.clock.advance(0.125)
    assert rig.backfiller.due_in() == pytest.approx((size - 0.125 * rate) / rate)
    await rig.backfiller.run()  # not due: nothing
    assert rig.records() == []
    rig.clock.advance(0.125)
    assert rig.backfiller.due_in() == 0.0
    await rig.backfiller.run()
    assert rig.keys() == ids[:size]
    assert len(rig.transports[0].calls) == 1

    # The bucket is empty again: the next slice is 0.2 s away, however long
    # the pause was before (it holds one slice at most).
    assert rig.backfiller.due_in() == pytest.approx(0.2)
    rig.clock.advance(0.0625)
    assert rig.backfiller.due_in() == pytest.approx(0.2 - 0.0625)
    rig.clock.advance(10.0)
    assert rig.backfiller.due_in() == 0.0
    await rig.backfiller.run()
    assert rig.keys() == ids[: 2 * size]
    await rig.backfiller.run()  # at once: nothing
    assert rig.keys() == ids[: 2 * size]
    while len(rig.keys()) < len(ids):
        rig.clock.advance(0.25)
        await rig.backfiller.run()
    assert [len(call) for call in rig.transports[0].calls] == [
        min(size, 50 - n) for n in range(0, 50, size)
    ]
    assert rig.keys() == ids
    assert [sent for _, sent in tables.stored().done] == [50]


async def test_slices_hold_at_most_500_records() -> None:
    tables = Tables()
    ids = members(tables, 1200, SEG_A)
    # Unpaced (no records/s limit): every call is due at once.
    rig = Rig(config((SEG_A,), limit=0), tables)
    await rig.backfiller.run()
    assert rig.keys() == ids[:500]
    assert rig.backfiller.due_in() == 0.0
    await rig.backfiller.run()
    assert rig.keys() == ids[:1000]
    await rig.backfiller.run()
    assert rig.keys() == ids
    # A high limit: 0.2 s of it is more than 500, still 500 a slice.
    tables = Tables()
    ids = members(tables, 600, SEG_A)
    rig = Rig(config((SEG_A,), limit=10_000, share=1.0), tables)
    await rig.backfiller.run()
    assert rig.backfiller.due_in() == pytest.approx(500 / 10_000)
    rig.clock.advance(1.0)
    await rig.backfiller.run()
    assert rig.keys() == ids[:500]


async def test_nothing_is_due_during_a_rebalance() -> None:
    tables = Tables()
    members(tables, 3, SEG_A)
    rig = Rig(config((SEG_A,)), tables)
    rig.rebalancing = True
    assert rig.backfiller.due_in() == 1.0
    await rig.backfiller.run()
    await rig.backfiller.prepare()
    assert rig.records() == []
    assert tables.activation_reads == []
    assert tables.activation_writes == []
    assert tables.member_id_calls == []
    rig.rebalancing = False
    assert rig.backfiller.due_in() == 0.0
    await rig.backfiller.run()
    assert len(rig.records()) == 3


# -- re-send ----------------------------------------------------------------------------------


async def test_a_resend_sends_every_current_member_once_more() -> None:
    tables = Tables()
    tables.seed("p1", {SEG_A: (True, T0), SEG_B: (True, T1)}, profile={"identityMap": ECID_MAP})
    tables.seed("p2", {SEG_B: (True, T1)})
    tables.seed("p3", {SEG_A: (True, T2)})
    tables.seed("p4", {SEG_A: (False, T2), UNMAPPED: (True, T0)})
    rig = Rig(config((SEG_A, SEG_B)), tables)
    await rig.backfiller.run()  # the backfill of the new destination
    backfill = rig.records()
    assert [key for _, key in backfill] == [ECID, "p2", "p3"]
    rig.clear()

    rig.activations.request(0, 0, "resend-1", frozenset({SEG_A}))
    rig.activations.request(0, 0, "resend-1", frozenset({SEG_A}))  # read again: taken once
    [job] = tables.stored().jobs
    assert (job.id, job.kind, job.segments) == ("resend-1", JobKind.RESEND, frozenset({SEG_A}))
    assert rig.backfiller.due_in() == 0.0
    await rig.backfiller.run()
    # The members of A, with every mapped segment they are in: as the backfill's.
    assert rig.records() == [backfill[0], backfill[2]]
    assert tables.stored().jobs == ()
    assert tables.stored().done[-1] == ("resend-1", 2)

    # Finished, then read again (a command replayed): not run twice.
    rig.clear()
    rig.activations.request(0, 0, "resend-1", frozenset({SEG_A}))
    await rig.backfiller.run()
    assert rig.records() == []
    # Another request, of every segment.
    rig.activations.request(0, 0, "resend-2", frozenset({SEG_A, SEG_B}))
    await rig.backfiller.run()
    assert rig.records() == backfill
    assert tables.stored().done[-1] == ("resend-2", 3)


async def test_a_resend_skips_a_profile_who_left_after_the_listing() -> None:
    tables = Tables()
    ids = members(tables, 4, SEG_A)
    tables.store(ONE, 0, Activation(frozenset({SEG_A}), 1.0))
    rig = Rig(config((SEG_A,), limit=100), tables)  # slices of 10
    with pytest.raises(NotPlanned):  # before the assignment is planned: retried later
        rig.activations.request(0, 0, "resend-1", frozenset({SEG_A}))
    await rig.backfiller.run()  # plans
    rig.activations.request(0, 0, "resend-1", frozenset({SEG_A}))
    await rig.backfiller.run()  # lists the members; the bucket starts empty
    assert rig.records() == []
    assert rig.backfiller.progress() == {(0, JobKind.RESEND): (1, 0, 4)}
    # ids[2] leaves A in a live batch (its exit is sent live).
    await rig.batch(q(ids[2], SEG_A, "exited", T1))
    [(exited, _)] = rig.records()
    assert ups(exited) == {SEG_A: entry(T1, "exited", name="Segment A")}
    rig.clear()
    rig.clock.advance(0.25)
    await rig.backfiller.run()
    assert rig.keys() == [ids[0], ids[1], ids[3]]
    assert tables.stored().done == (("resend-1", 3),)


async def test_a_resend_command_through_the_pipeline() -> None:
    tables = Tables()
    ids = members(tables, 2, SEG_A)
    ids += members(tables, 2, SEG_A, partition=1)
    settings = config((SEG_A, SEG_B))
    rig = Rig(settings, tables, partitions=(0, 1))
    await rig.backfiller.run()
    rig.clear()
    command = encode_resend("resend-x", ONE, None)
    await rig.batch((settings.control_topic, b"resend-x", command, 1))
    [job] = tables.stored(ONE, 1).jobs
    assert (job.id, job.segments) == ("resend-x", frozenset({SEG_A, SEG_B}))
    assert tables.stored(ONE, 0).jobs == ()  # only the partition that took it
    await rig.backfiller.run()
    assert rig.keys() == ids[2:]


async def test_a_command_of_a_partition_not_planned_waits_for_the_plan() -> None:
    """A command of a partition the planned assignment lacks (handed over by a
    rebalance, not planned yet): its batch is retried whole, like an outage,
    never dead-lettered, and taken once the new assignment is planned."""
    tables = Tables()
    members(tables, 2, SEG_A)
    settings = config((SEG_A,))
    rig = Rig(settings, tables)
    await rig.backfiller.run()
    rig.rebalance([0, 1])
    command = encode_resend("resend-r", ONE, None)
    with pytest.raises(RetryLater) as caught:
        await rig.batch((settings.control_topic, b"resend-r", command, 1))
    assert is_outage(caught.value)
    assert rig.dead_letters.sent == []
    await rig.backfiller.prepare()  # what the batch loop does before the retry
    await rig.batch((settings.control_topic, b"resend-r", command, 1))
    assert [job.id for job in tables.stored(ONE, 1).jobs] == ["resend-r"]


async def test_a_command_taken_before_a_rebalance_began_is_not_held_by_it() -> None:
    """The batch in flight when a rebalance begins: Faust waits for it before it
    hands its partitions over, so its command is taken under the assignment it
    was read in (retrying it until the new one is planned would hold the
    rebalance forever: the scaling test's stall with parking's lanes)."""
    tables = Tables()
    members(tables, 2, SEG_A)
    settings = config((SEG_A,))
    rig = Rig(settings, tables)
    await rig.backfiller.run()
    rig.generation += 1  # a rebalance began
    rig.rebalancing = True
    command = encode_resend("resend-r", ONE, None)
    await rig.batch((settings.control_topic, b"resend-r", command, 0))
    assert [job.id for job in tables.stored(ONE, 0).jobs] == ["resend-r"]
    assert rig.dead_letters.sent == []


async def test_a_stale_plan_is_not_used_once_the_rebalance_is_over() -> None:
    """Partition 0 went to another worker and came back while this one backed
    off: what it holds of partition 0 is stale (the other owner may have taken
    a request since), so a command waits for the plan to be read again."""
    tables = Tables()
    members(tables, 2, SEG_A)
    settings = config((SEG_A,))
    rig = Rig(settings, tables)
    await rig.backfiller.run()
    rig.generation += 2  # away and back; the rebalance is over
    command = encode_resend("resend-r", ONE, None)
    with pytest.raises(RetryLater):
        await rig.batch((settings.control_topic, b"resend-r", command, 0))
    await rig.backfiller.prepare()
    await rig.batch((settings.control_topic, b"resend-r", command, 0))
    assert [job.id for job in tables.stored(ONE, 0).jobs] == ["resend-r"]


# -- dead letters -----------------------------------------------------------------------------


async def test_a_member_with_malformed_memberships_is_dead_lettered() -> None:
    tables = Tables()
    ids = members(tables, 3, SEG_A)
    tables.memberships[ids[1]] = {SEG_A: [True, "yesterday"]}
    rig = Rig(config((SEG_A, SEG_B)), tables)
    await rig.backfiller.run()
    assert rig.keys() == [ids[0], ids[2]]
    [(key, letter)] = rig.dead_letters.sent
    assert key == ids[1].encode()
    assert letter["reason"] == "internal_error"
    assert letter["detail"].startswith("ValueError: ")
    assert letter["destination"] == ONE
    assert letter["stream"] == "stream-one"
    stored = tables.stored()
    [(job_id, sent)] = stored.done
    assert letter["source"] == {"job": job_id, "kind": "backfill", "partition": 0}
    assert stored.jobs == ()
    assert sent == 2


async def test_a_record_the_stream_rejects_is_dead_lettered() -> None:
    tables = Tables()
    ids = members(tables, 3, SEG_A)
    big = {"person": {"name": {"lastName": "x" * 400}}}
    tables.profiles[ids[1]] = {"attributes": big, "identityMap": EMAIL_MAP}
    transport = FakeTransport(max_record_bytes=300)
    rig = Rig(config((SEG_A,)), tables, transports=[transport])
    await rig.writers[0].start()
    await rig.backfiller.run()
    assert rig.keys() == [ids[0], ids[2]]
    [(key, letter)] = rig.dead_letters.sent
    assert key == ids[1].encode()
    assert letter["reason"] == "record_too_large"
    assert letter["partitionKey"] == EMAIL
    assert letter["destination"] == ONE
    record = orjson.loads(letter["value"])
    assert record["person"] == big["person"]
    assert ups(record) == {SEG_A: existing(T0, SEG_A)}
    stored = tables.stored()
    [(job_id, sent)] = stored.done
    assert letter["source"] == {"job": job_id, "kind": "backfill", "partition": 0}
    assert stored.jobs == ()
    assert sent == 2, "a rejected record is dead-lettered, not counted as sent"


# -- a new assignment, before a batch -----------------------------------------------------------


async def test_prepare_plans_a_new_generation_before_the_batch() -> None:
    tables = Tables()
    tables.seed("p1", {SEG_A: (True, T0)})
    rig = Rig(config((SEG_A, SEG_B), limit=100), tables)  # paced: planning sends nothing yet
    await rig.backfiller.prepare()
    assert len(tables.stored().jobs) == 1
    assert rig.backfiller.progress() == {(0, JobKind.BACKFILL): (1, 0, 1)}
    # The batch: p2 joins A (its live record: realized).
    await rig.batch(q("p2", SEG_A, "realized", T1, ECID_MAP))
    assert rig.records() == [
        (
            {
                "segmentMembership": {"ups": {SEG_A: entry(T1, "realized", name="Segment A")}},
                "identityMap": ECID_MAP,
            },
            ECID,
        )
    ]
    rig.clear()
    rig.clock.advance(0.25)
    await rig.backfiller.run()
    assert rig.keys() == ["p1"]  # not p2: it joined after the planning
    assert [sent for _, sent in tables.stored().done] == [1]


async def test_prepare_runs_only_for_a_new_generation() -> None:
    tables = Tables()
    members(tables, 2, SEG_A)
    rig = Rig(config((SEG_A,)), tables)
    await rig.backfiller.prepare()
    assert len(rig.records()) == 2
    # Work again, same generation: prepare leaves it to run().
    rig.clear()
    rig.activations.request(0, 0, "resend-1", frozenset({SEG_A}))
    await rig.backfiller.prepare()
    assert rig.records() == []
    # A rebalance that hands over a new partition: planned by prepare.
    ids = members(tables, 2, SEG_A, partition=1)
    rig.generation, rig.partitions = 2, frozenset({0, 1})
    assert rig.backfiller.due_in() == 0.0
    await rig.backfiller.prepare()
    assert set(ids) <= set(rig.keys())
    assert tables.stored(ONE, 1).active == {SEG_A}


async def test_a_new_generation_reads_the_activations_again() -> None:
    tables = Tables()
    members(tables, 2, SEG_A)
    rig = Rig(config((SEG_A,)), tables)
    await rig.backfiller.run()
    rig.clear()
    # Meanwhile another worker owned the partition and took a request.
    job = Job("resend-9", JobKind.RESEND, frozenset({SEG_A}), 1.0)
    tables.store(ONE, 0, Activation(frozenset({SEG_A}), 1.0, (job,)))
    rig.generation += 1
    await rig.backfiller.run()
    assert len(rig.records()) == 2
    assert tables.stored().done[-1] == ("resend-9", 2)


async def test_a_job_another_worker_finished_is_not_sent_again() -> None:
    tables = Tables()
    members(tables, 3, SEG_A)
    rig = Rig(config((SEG_A,), limit=100), tables)  # paced: planning sends nothing
    await rig.backfiller.run()
    [job] = tables.stored().jobs
    assert rig.backfiller.progress() == {(0, JobKind.BACKFILL): (1, 0, 3)}
    # A rebalance moved the partition away and back; its owner meanwhile sent the job.
    tables.store(ONE, 0, Activation(frozenset({SEG_A}), START, done=((job.id, 3),)))
    rig.generation += 1
    rig.clock.advance(1.0)
    await rig.backfiller.run()
    rig.clock.advance(1.0)
    await rig.backfiller.run()
    assert rig.records() == []
    assert rig.backfiller.progress() == {}
    assert tables.stored().done == ((job.id, 3),)


# -- a partition that moves while a slice is in flight ---------------------------------------------


def rebalance_during_put(rig: Rig, partitions: Iterable[int], revoked: Iterable[int] = ()) -> None:
    """A rebalance completes while the next slice's records are being put: the
    transport's first call moves the assignment on (``revoked``: partitions whose
    keys this worker's store drops then), and the writes from there on are kept
    in ``rig.writes_at_rebalance``."""
    transport = rig.transports[0]

    def rebalance() -> None:
        transport.on_call = None
        rig.writes_at_rebalance = len(rig.tables.activation_writes)
        rig.rebalance(partitions)
        rig.tables.revoked.update(revoked)

    transport.on_call = rebalance


async def test_a_slice_whose_partitions_moved_stores_nothing() -> None:
    tables = Tables()
    ids0 = members(tables, 3, SEG_A, partition=0)
    ids1 = members(tables, 3, SEG_A, partition=1)
    rig = Rig(config((SEG_A,)), tables, partitions=(0, 1))  # unpaced: one slice of both
    rebalance_during_put(rig, [0])
    await rig.backfiller.run()
    assert rig.keys() == ids0 + ids1  # sent
    # Nothing stored: partition 1 is another worker's now, and 0 was planned
    # again in the new rebalance count (by whoever owned it meanwhile).
    assert tables.activation_writes[rig.writes_at_rebalance :] == []
    for partition in (0, 1):
        [job] = tables.stored(ONE, partition).jobs
        assert (job.cursor, job.sent) == (None, 0)
    assert rig.dead_letters.sent == []
    # Planned again: partition 0 is sent again (the slice in flight, no more).
    rig.clear()
    assert rig.backfiller.due_in() == 0.0
    await rig.backfiller.run()
    assert rig.keys() == ids0
    assert [sent for _, sent in tables.stored(ONE, 0).done] == [3]
    assert tables.writes_to(1, rig.writes_at_rebalance) == []
    # The new owner of partition 1 sends it again too.
    other = Rig(config((SEG_A,)), tables, partitions=(1,))
    await other.backfiller.run()
    assert other.keys() == ids1
    assert [sent for _, sent in tables.stored(ONE, 1).done] == [3]


async def test_a_partition_moved_mid_job_resends_at_most_the_slice_in_flight() -> None:
    tables = Tables()
    ids = members(tables, 25, SEG_A)
    rig = Rig(config((SEG_A,), limit=100), tables)  # slices of 10
    await rig.backfiller.run()
    rig.clock.advance(0.25)
    await rig.backfiller.run()
    assert rig.keys() == ids[:10]
    # The second slice: the partition moves away and back while it is put.
    rebalance_during_put(rig, [0])
    rig.clock.advance(0.25)
    await rig.backfiller.run()
    assert rig.keys() == ids[:20]
    [job] = tables.stored().jobs
    assert (job.cursor, job.sent, job.total) == (ids[9], 10, 25)  # not moved
    assert tables.activation_writes[rig.writes_at_rebalance :] == []
    while tables.stored().jobs:
        rig.clock.advance(0.25)
        await rig.backfiller.run()
    assert rig.keys() == ids[:20] + ids[10:]  # the slice in flight twice, no more
    assert [sent for _, sent in tables.stored().done] == [25]


async def test_a_worker_that_lost_a_partition_writes_nothing_to_it() -> None:
    """The memory store drops a moved partition's keys once the rebalance's
    recovery is done: reading its activation then finds none. The worker that
    lost it must not plan it again (an "adopted" activation with no job, and the
    marker, written to the changelog of a partition another worker owns, would
    replace that worker's pending job there)."""
    tables = Tables()
    members(tables, 3, SEG_A, partition=0)
    ids1 = members(tables, 10, SEG_A, partition=1)
    rig = Rig(config((SEG_A,), limit=100), tables, partitions=(0, 1))
    await rig.backfiller.run()  # planned; slices of 10: 3 of partition 0, 7 of 1
    rebalance_during_put(rig, [0], revoked=[1])
    rig.clock.advance(0.25)
    await rig.backfiller.run()
    assert len(rig.keys()) == 10
    assert tables.writes_to(1, rig.writes_at_rebalance) == []
    # The new owner (its store recovered from the changelog) sends partition 1
    # from the stored cursor: every member, the 7 in flight again.
    tables.revoked.clear()
    other = Rig(config((SEG_A,)), tables, partitions=(1,))
    await other.backfiller.run()
    assert other.keys() == ids1


async def test_a_partition_known_lost_gets_no_slice_of_another_destination() -> None:
    """Once a slice found its partition moved, the worker sends nothing more of
    it: the next destination's slice waits for the new plan."""
    tables = Tables()
    ids = members(tables, 3, SEG_A, SEG_C)
    rig = Rig(config((SEG_A,), (SEG_C,)), tables, partitions=(0,))
    rebalance_during_put(rig, [])  # the partition moves away while one's slice is put
    await rig.backfiller.run()
    assert rig.keys(0) == ids
    assert rig.records(1) == []
    assert tables.activation_writes[rig.writes_at_rebalance :] == []


# -- how much a slice holds -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("owned", "count", "size"),
    [
        ((0, 1, 2, 3), 4, 10),  # every partition: 0.5 * 100 records/s, 0.2 s of it
        ((0, 1), 4, 5),  # half of them: half the rate
        ((0,), 4, 2),  # a quarter: 12.5 records/s, 2.5 a slice
        ((0, 1), 2, 10),
    ],
)
async def test_the_pace_is_split_by_the_share_of_partitions_owned(
    owned: tuple[int, ...], count: int, size: int
) -> None:
    tables = Tables(planned=owned)
    ids = members(tables, 30, SEG_A)
    rig = Rig(config((SEG_A,), limit=100), tables, partitions=owned, partition_count=count)
    rate = 0.5 * 100 * len(owned) / count
    await rig.backfiller.run()  # planned; the bucket starts empty
    assert rig.backfiller.due_in() == pytest.approx(size / rate)
    rig.clock.advance(1.0)  # more than a slice's time: the bucket holds one slice
    await rig.backfiller.run()
    assert rig.keys() == ids[:size]
    assert rig.backfiller.due_in() == pytest.approx(size / rate)
    rig.clock.advance(0.5 * size / rate)
    assert rig.backfiller.due_in() == pytest.approx(0.5 * size / rate)
    await rig.backfiller.run()  # half the tokens of a slice: not due
    assert rig.keys() == ids[:size]
    rig.clock.advance(1.0)
    await rig.backfiller.run()
    assert rig.keys() == ids[: 2 * size]
    assert [len(call) for call in rig.transports[0].calls] == [size, size]


async def test_the_pace_of_two_workers_adds_up_to_the_share() -> None:
    """Two workers of a 4-partition input, two partitions each: 25 records/s
    each, 50 in all, the backfill share of one shard's 100."""
    tables = Tables(planned=(0, 1, 2, 3))
    for partition in range(4):
        members(tables, 20, SEG_A, partition=partition)
    rigs = [
        Rig(config((SEG_A,), limit=100), tables, partitions=owned, partition_count=4)
        for owned in ((0, 1), (2, 3))
    ]
    for rig in rigs:
        await rig.backfiller.run()  # planned; the bucket starts empty
        while len(rig.keys()) < 40:
            rig.clock.advance(rig.backfiller.due_in())
            await rig.backfiller.run()
        # 40 members at 25/s: 1.6 s, in slices of 5
        assert rig.clock.now - START == pytest.approx(1.6)
        assert [len(call) for call in rig.transports[0].calls] == [5] * 8


async def record_size() -> int:
    """The bytes of one backfill record of a ``members`` of A (all are the same size)."""
    probe = Rig(config((SEG_A,)), Tables())
    members(probe.tables, 2, SEG_A)
    await probe.backfiller.run()
    sizes = {len(data) for call in probe.transports[0].calls for data, _ in call}
    assert len(sizes) == 1
    return sizes.pop()


async def test_a_small_memory_budget_bounds_the_records_of_a_slice() -> None:
    tables = Tables()
    ids = members(tables, 10, SEG_A)
    size = await record_size()
    # Output may hold just under 3 records: a slice stops once it holds more.
    memory = MemoryBudget(2 * (3 * size - 1))
    rig = Rig(config((SEG_A,), limit=0), tables, memory=memory)  # unpaced: 500 a slice
    await rig.backfiller.run()
    assert [len(data) for data, _ in rig.transports[0].calls[0]] == [size] * 3
    assert rig.keys() == ids[:3]
    assert memory.output == 0  # released once put
    [job] = tables.stored().jobs
    assert (job.cursor, job.sent) == (ids[2], 3)
    while tables.stored().jobs:
        await rig.backfiller.run()
        assert memory.output == 0
    assert [len(call) for call in rig.transports[0].calls] == [3, 3, 3, 1]
    assert rig.keys() == ids


async def test_no_slice_while_the_output_budget_is_over() -> None:
    tables = Tables()
    ids = members(tables, 4, SEG_A)
    memory = MemoryBudget(10**6)
    rig = Rig(config((SEG_A,)), tables, memory=memory)
    held = memory.share + 1
    memory.take_output(held)  # a live batch holds more than its half
    await rig.backfiller.run()
    await rig.backfiller.run()
    assert rig.records() == []
    [job] = tables.stored().jobs
    assert (job.cursor, job.sent) == (None, 0)
    assert memory.output == held
    memory.release_output(held)
    await rig.backfiller.run()
    assert rig.keys() == ids
    assert memory.output == 0


async def test_a_failed_slice_releases_its_memory() -> None:
    tables = Tables()
    members(tables, 4, SEG_A)
    memory = MemoryBudget(10**6)
    rig = Rig(config((SEG_A,)), tables, memory=memory)
    refused = failing_transport(rig.transports[0])
    await rig.backfiller.run()
    assert refused
    assert memory.output == 0


# -- progress ---------------------------------------------------------------------------------


async def test_progress_counts_jobs_sent_and_total_per_destination_and_kind() -> None:
    tables = Tables()
    members(tables, 15, SEG_A, partition=0)
    members(tables, 4, SEG_A, partition=1)
    tables.seed("p1-9999", {SEG_C: (True, T0)}, partition=1)
    rig = Rig(config((SEG_A,), (SEG_B, SEG_C), limit=100), tables, partitions=(0, 1))
    assert rig.backfiller.progress() == {}  # nothing planned yet
    await rig.backfiller.run()  # planned: every partition listed; nothing sent yet
    assert tables.member_id_calls == [(0, 1)]  # read once, for every partition owned
    assert rig.backfiller.progress() == {
        (0, JobKind.BACKFILL): (2, 0, 19),
        # partition 0 has no member of B or C: done at once (0 of 0); 1 has one
        (1, JobKind.BACKFILL): (1, 0, 1),
    }
    assert [sent for _, sent in tables.stored(TWO, 0).done] == [0]
    rig.clock.advance(0.25)
    await rig.backfiller.run()  # a slice of 10 each
    assert rig.backfiller.progress() == {
        (0, JobKind.BACKFILL): (2, 10, 19),
        (1, JobKind.BACKFILL): (0, 1, 1),  # finished: done == total, no job
    }
    rig.clock.advance(0.25)
    await rig.backfiller.run()  # the 5 left in partition 0, the 4 of partition 1
    assert rig.backfiller.progress() == {
        (0, JobKind.BACKFILL): (0, 19, 19),
        (1, JobKind.BACKFILL): (0, 1, 1),
    }
    assert len(rig.records(0)) == 19
    assert rig.keys(1) == ["p1-9999"]

    # A re-send: counted by its sent alone until its partition is listed.
    rig.activations.request(0, 0, "resend-1", frozenset({SEG_A}))
    assert rig.backfiller.progress()[0, JobKind.RESEND] == (1, 0, 0)
    rig.clock.advance(0.25)
    await rig.backfiller.run()
    assert tables.member_id_calls == [(0, 1), (0,)]  # listed alone, when it came
    assert rig.backfiller.progress()[0, JobKind.RESEND] == (1, 10, 15)
    rig.clock.advance(0.25)
    await rig.backfiller.run()
    assert rig.backfiller.progress() == {
        (0, JobKind.BACKFILL): (0, 19, 19),
        (0, JobKind.RESEND): (0, 15, 15),
        (1, JobKind.BACKFILL): (0, 1, 1),
    }
    # A rebalance: counted again from the new plan, which finds nothing to do.
    rig.generation += 1
    await rig.backfiller.run()
    assert rig.backfiller.progress() == {}


async def test_progress_counts_dead_letters_and_leavers_as_done() -> None:
    tables = Tables()
    ids = members(tables, 4, SEG_A)
    tables.memberships[ids[1]] = {SEG_A: [True, "yesterday"]}  # dead-lettered
    rig = Rig(config((SEG_A,), limit=100), tables)
    await rig.backfiller.run()
    assert rig.backfiller.progress() == {(0, JobKind.BACKFILL): (1, 0, 4)}
    tables.seed(ids[2], {SEG_A: (False, T1)})  # left A after the listing: skipped
    rig.clock.advance(0.25)
    await rig.backfiller.run()
    assert rig.keys() == [ids[0], ids[3]]
    assert len(rig.dead_letters.sent) == 1
    assert rig.backfiller.progress() == {(0, JobKind.BACKFILL): (0, 4, 4)}
    assert [sent for _, sent in tables.stored().done] == [2]


async def test_a_queued_backfill_sends_the_members_of_when_its_mapping_was_seen() -> None:
    """A segment mapped while another backfill of the partition is pending: its
    job waits behind that one, and still sends the members of the moment the
    mapping was first seen (docs/contract.md, "Backfill and re-send")."""
    tables = Tables()
    ids = members(tables, 3, SEG_A)
    pending = Job("backfill-a", JobKind.BACKFILL, frozenset({SEG_A}), 1.0)
    tables.store(ONE, 0, Activation(frozenset({SEG_A}), 1.0, (pending,)))
    tables.seed("p0-0009", {SEG_C: (True, T0)})  # a member of C when C is mapped
    rig = Rig(config((SEG_A, SEG_C), limit=100), tables)  # paced: planning sends nothing
    await rig.backfiller.prepare()
    [first, second] = tables.stored().jobs
    assert first.id == "backfill-a"
    assert second.segments == {SEG_C}
    # Both listed at once: 3 members of A, 1 of C.
    assert tables.member_id_calls == [(0,)]
    assert rig.backfiller.progress() == {(0, JobKind.BACKFILL): (2, 0, 4)}
    # The batch: p0-0010 joins C after the mapping was seen (its live record: realized).
    await rig.batch(q("p0-0010", SEG_C, "realized", T1))
    assert [ups(r)[SEG_C]["status"] for r, _ in rig.records()] == ["realized"]
    rig.clear()
    for _ in range(4):
        rig.clock.advance(0.25)
        await rig.backfiller.run()
    assert tables.stored().jobs == ()
    assert rig.keys() == [*ids, "p0-0009"]  # not p0-0010: it joined after the mapping


# -- parking (worker.parking holds a destination) ---------------------------------------------


class FakeHolds:
    """What the backfill asks of worker.parking: the destinations it holds."""

    def __init__(self) -> None:
        self.held: set[int] = set()
        self.failures: list[tuple[int, str | None]] = []

    def holds(self, destination: int) -> bool:
        return destination in self.held

    def failed(self, destination: int, reason: str | None) -> None:
        self.failures.append((destination, reason))
        self.held.add(destination)


def with_parking(rig: Rig) -> FakeHolds:
    holds = FakeHolds()
    checked: Holds = holds  # mypy checks the fake against the protocol
    rig.backfiller = Backfiller(
        rig.destinations,
        rig.activations,
        rig.tables,
        rig.dead_letters,
        rig.assignment,
        len(rig.partitions),
        clock=rig.clock,
        parking=checked,
    )
    return holds


async def test_a_destination_parking_holds_gets_no_slice() -> None:
    tables = Tables()
    ids = members(tables, 3, SEG_A, SEG_C)
    rig = Rig(config((SEG_A,), (SEG_C,)), tables)
    holds = with_parking(rig)
    holds.held.add(0)
    await rig.backfiller.run()
    assert rig.records(0) == []  # held: its records would overtake parked ones
    assert sorted(rig.keys(1)) == ids  # the other destination goes on
    [job] = tables.stored(ONE).jobs
    assert (job.cursor, job.sent) == (None, 0)
    assert rig.backfiller.due_in() == 1.0  # nothing due while held
    holds.held.clear()
    assert rig.backfiller.due_in() == 0.0
    await rig.backfiller.run()
    assert sorted(rig.keys(0)) == ids
    assert tables.stored(ONE).jobs == ()


async def test_a_slice_the_stream_refuses_parks_the_destination_and_moves_nothing() -> None:
    tables = Tables()
    ids = members(tables, 3, SEG_A)
    rig = Rig(config((SEG_A,)), tables)
    holds = with_parking(rig)
    refused: list[int] = []

    def refuse() -> None:
        refused.append(1)
        raise TransportError("ResourceNotFoundException", "stream gone", fatal=True)

    rig.transports[0].on_call = refuse
    await rig.backfiller.run()
    assert refused == [1]  # at once: no retry of a refusing stream
    assert holds.failures == [(0, "ResourceNotFoundException: stream gone")]
    [job] = tables.stored().jobs
    assert (job.cursor, job.sent) == (None, 0)
    assert rig.dead_letters.sent == []
    # Once parking lets it go (its stream accepts again), the whole job is sent.
    rig.transports[0].on_call = None
    holds.held.clear()
    rig.clock.advance(31.0)
    await rig.backfiller.run()
    assert sorted(rig.keys()) == ids
    assert tables.stored().jobs == ()
    assert holds.failures == [(0, "ResourceNotFoundException: stream gone")]


def test_a_deferred_slice_is_retried_later() -> None:
    assert issubclass(Deferred, RetryLater)
    assert is_outage(Deferred("destination parked"))
