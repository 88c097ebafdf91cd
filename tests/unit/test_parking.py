"""Parking (worker.parking) with fakes: lanes planned per assignment, records parked in
order, probes and drains, pause and resume, statuses.

The parking topics are an in-memory log per (topic, partition); the parking table
is a dict; the destinations' writers are real ``KinesisWriter`` objects on the
scripted fake transport of test_kinesis_writer; the clock, the rebalance count and
the assignment are injected.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from tests.support import FakeClock
from tests.unit.test_kinesis_writer import FakeTransport
from worker.kinesis import KinesisWriter, Record, TransportError, WriterConfig
from worker.parking import (
    DRAIN_BUDGET_S,
    IDLE_POLL_S,
    SLICE,
    Parking,
    ParkingLog,
    ParkingTables,
)
from worker.pipeline import DeadLetterSink, Destination, Parked
from worker.settings import DestinationSettings
from worker.vocabulary import DeliveryState, ExportStatus

ONE, TWO = "Dest One", "Dest Two"
TOPICS = ["app-parking-one", "app-parking-two"]
INPUT = "segment-qualifications"
START = 1_000_000.0  # the fake clock's start
PROBE_S = 10.0
MIB = 1024 * 1024
THROTTLED = "ProvisionedThroughputExceededException"
GONE = TransportError("ResourceNotFoundException", "stream gone", fatal=True)
# No real waiting in the writers: retries sleep 0 s.
FAST = WriterConfig(backoff_base_s=0.0, backoff_max_s=0.0, fatal_retry_s=0.0)


# -- fakes ----------------------------------------------------------------------------------


class Clock(FakeClock):
    def __init__(self, now: float = START) -> None:
        super().__init__(now)


class FakeLog:
    """The parking topics: a list of records per (topic, partition), offsets from 0,
    each stamped with the clock when written (Kafka's timestamp).

    ``error``: every call fails; ``unreadable[topic]``: that topic's end offsets
    and reads fail; ``write_errors[(topic, partition)]``: writes there fail
    (nothing stored); ``write_gates[(topic, partition)]``: writes there wait for
    the event before storing."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lanes: dict[tuple[str, int], list[Parked]] = {}
        self.writes: list[tuple[str, int, list[bytes]]] = []
        self.reads: list[tuple[str, int, int, int]] = []
        self.end_offset_calls: list[tuple[str, tuple[int, ...]]] = []
        self.on_end_offsets: Callable[[], None] | None = None
        self.error: Exception | None = None
        # Raised once by the next write after Kafka stored its records (a timeout
        # whose write went through).
        self.lost_reply: Exception | None = None
        self.trims: list[tuple[str, int, int]] = []
        self.trim_error: Exception | None = None
        self.unreadable: dict[str, Exception] = {}
        self.write_errors: dict[tuple[str, int], Exception] = {}
        self.write_gates: dict[tuple[str, int], asyncio.Event] = {}

    async def write(self, topic: str, partition: int, records: Sequence[Parked]) -> list[int]:
        if self.error is not None:
            raise self.error
        gate = self.write_gates.get((topic, partition))
        if gate is not None:
            await gate.wait()
        failure = self.write_errors.get((topic, partition))
        if failure is not None:
            raise failure
        lane = self.lanes.setdefault((topic, partition), [])
        offsets = []
        for parked in records:
            stored = dataclasses.replace(parked, offset=len(lane), timestamp=self.clock())
            lane.append(stored)
            offsets.append(stored.offset)
        self.writes.append((topic, partition, [p.record.data for p in records]))
        if self.lost_reply is not None:
            lost, self.lost_reply = self.lost_reply, None
            raise lost
        return offsets

    async def end_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]:
        self.end_offset_calls.append((topic, tuple(sorted(partitions))))
        if self.on_end_offsets is not None:
            self.on_end_offsets()
        if self.error is not None:
            raise self.error
        if topic in self.unreadable:
            raise self.unreadable[topic]
        return {p: len(self.lanes.get((topic, p), [])) for p in partitions}

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Parked]:
        self.reads.append((topic, partition, offset, limit))
        if self.error is not None:
            raise self.error
        if topic in self.unreadable:
            raise self.unreadable[topic]
        return list(self.lanes.get((topic, partition), [])[offset : offset + limit])

    async def trim(self, topic: str, partition: int, before: int) -> None:
        if self.trim_error is not None:
            raise self.trim_error
        self.trims.append((topic, partition, before))

    def seed(self, topic: str, partition: int, records: Iterable[Parked], at: float) -> None:
        lane = self.lanes.setdefault((topic, partition), [])
        for parked in records:
            lane.append(dataclasses.replace(parked, offset=len(lane), timestamp=at))

    def data(self, topic: str, partition: int) -> list[bytes]:
        return [p.record.data for p in self.lanes.get((topic, partition), [])]


class FakeTables:
    """The parking table: (destination, partition) -> value."""

    def __init__(self) -> None:
        self.parking: dict[tuple[str, int], dict[str, Any]] = {}
        self.writes: list[tuple[str, int, dict[str, Any] | None]] = []
        self.flushes = 0

    def get_parking(self, destination: str, partition: int) -> dict[str, Any] | None:
        value = self.parking.get((destination, partition))
        return None if value is None else dict(value)

    def put_parking(self, destination: str, value: dict[str, Any] | None, partition: int) -> None:
        self.writes.append((destination, partition, None if value is None else dict(value)))
        if value is None:
            self.parking.pop((destination, partition), None)
        else:
            self.parking[destination, partition] = dict(value)

    async def flush(self) -> None:
        self.flushes += 1


class FakeDeadLetters:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, dict[str, Any]]] = []

    async def send(self, key: bytes | None, value: bytes) -> None:
        self.sent.append((key, orjson.loads(value)))


def _typed(
    log: FakeLog, tables: FakeTables, letters: FakeDeadLetters
) -> tuple[ParkingLog, ParkingTables, DeadLetterSink]:
    return log, tables, letters  # mypy checks the fakes against the protocols


def destination_settings(name: str, stream: str, **extra: Any) -> DestinationSettings:
    return DestinationSettings.model_validate(
        {
            "name": name,
            "stream": stream,
            "region": "us-east-1",
            "segments": [{"id": "s"}],
            "park_probe_s": PROBE_S,
            "park_after_s": 0.0,
            **extra,
        }
    )


class Rig:
    """One worker's parking: two destinations, the log, the table, the clock, the
    assignment (``generation``, ``partitions``; None while ``rebalancing``;
    raising ``assignment_error`` when set)."""

    def __init__(self, partitions: Iterable[int] = (0, 1)) -> None:
        self.clock = Clock()
        self.log = FakeLog(self.clock)
        self.tables = FakeTables()
        self.letters = FakeDeadLetters()
        self.transports = [FakeTransport(), FakeTransport()]
        self.settings = [
            destination_settings(ONE, "stream-one"),
            destination_settings(TWO, "stream-two"),
        ]
        self.writers = [
            KinesisWriter(s.stream, t, FAST)
            for s, t in zip(self.settings, self.transports, strict=True)
        ]
        self.destinations = [
            Destination(s, w) for s, w in zip(self.settings, self.writers, strict=True)
        ]
        self.generation = 1
        self.partitions = frozenset(partitions)
        self.rebalancing = False
        self.assignment_error: Exception | None = None
        log, tables, letters = _typed(self.log, self.tables, self.letters)
        self.parking = Parking(
            self.destinations,
            tables,
            log,
            letters,
            self.assignment,
            lambda: self.generation,
            TOPICS,
            clock=self.clock,
        )

    def assignment(self) -> tuple[int, frozenset[int]] | None:
        if self.assignment_error is not None:
            raise self.assignment_error
        return None if self.rebalancing else (self.generation, self.partitions)

    def rebalance(self, partitions: Iterable[int]) -> None:
        self.generation += 1
        self.partitions = frozenset(partitions)

    def accepted(self, index: int = 0) -> list[bytes]:
        return [data for data, _ in self.transports[index].accepted]

    def sent(self, index: int = 0) -> list[bytes]:
        return [data for data, _ in self.transports[index].sent()]

    def status(self, index: int = 0) -> Any:
        return self.parking.statuses()[index]

    async def probe(self) -> None:
        """Once the probe is due."""
        self.clock.advance(PROBE_S)
        assert self.parking.due_in() == 0.0
        await self.parking.run()


def parked(
    key: str, n: int, partition: int = 0, *, data: bytes | None = None, offset: int = 100
) -> Parked:
    """A record of profile ``key`` as the pipeline parks it; ``offset``: the input event's."""
    return Parked(
        Record(data if data is not None else f"{key}#{n}".encode(), key),
        ExportStatus.REALIZED,
        {"topic": INPUT, "partition": partition, "offset": offset + n},
        key.encode(),
    )


# -- planning -------------------------------------------------------------------------------


async def test_before_prepare_every_lane_is_interim_and_parks() -> None:
    """Routing never waits for the lanes: before they are read, a lane counts as
    holding records (its records are parked behind whatever the log holds) and
    nothing is read or written until the plan."""
    rig = Rig()
    assert [rig.parking.parks(i, p) for i in (0, 1) for p in (0, 1)] == [True] * 4
    assert rig.parking.holds(0)
    assert rig.parking.holds(1)
    assert rig.log.end_offset_calls == []
    assert rig.log.reads == []
    assert rig.parking.due_in() == 0.0  # an assignment to read
    await rig.parking.prepare()
    assert [rig.parking.parks(i, p) for i in (0, 1) for p in (0, 1)] == [False] * 4
    assert not rig.parking.holds(0)
    assert not rig.parking.holds(1)
    assert rig.log.end_offset_calls == [(TOPICS[0], (0, 1)), (TOPICS[1], (0, 1))]
    assert rig.log.writes == []
    assert rig.transports[0].calls == []
    assert rig.parking.due_in() == IDLE_POLL_S


async def test_a_pause_before_prepare_is_stored_and_kept_by_the_plan() -> None:
    rig = Rig()
    rig.tables.parking[ONE, 1] = {"drained": 4, "paused": False}
    rig.parking.pause(0, 1, True)
    assert rig.tables.parking[ONE, 1] == {"drained": 4, "paused": True}  # its cursor kept
    rig.log.seed(TOPICS[0], 1, [parked("b", n, 1) for n in range(6)], at=START)
    await rig.parking.prepare()
    assert rig.parking.parks(0, 1)
    assert not rig.parking.parks(0, 0)
    assert rig.transports[0].calls == []  # paused: not drained
    status = rig.status(0)
    assert (status.state, status.parked) == (DeliveryState.PAUSED, 2)


async def test_records_parked_in_an_interim_lane_are_drained_in_order_after_the_plan() -> None:
    rig = Rig()
    # Parked before (by this worker or the partition's previous owner), not sent.
    rig.log.seed(TOPICS[0], 0, [parked("a", 0), parked("a", 1)], at=START - 30)
    rig.tables.parking[ONE, 0] = {"drained": 0, "paused": False}
    # A batch before the lanes are read: parked, behind what the log holds.
    assert rig.parking.parks(0, 0)
    await rig.parking.park(0, [(0, parked("a", 2))])
    assert rig.log.data(TOPICS[0], 0) == [b"a#0", b"a#1", b"a#2"]
    assert rig.parking.parks(0, 0)  # the same interim lane
    assert rig.transports[0].calls == []
    # Interim lanes are never drained: only the plan's are.
    rig.clock.advance(1)
    assert rig.parking.due_in() == 0.0  # to read the lanes
    await rig.parking.prepare()
    assert rig.accepted() == [b"a#0", b"a#1", b"a#2"]
    assert rig.tables.parking[ONE, 0] == {"drained": 3, "paused": False}
    # The planned lane replaced the interim one: empty, direct.
    assert not rig.parking.parks(0, 0)
    assert rig.status(0).state is DeliveryState.DIRECT
    assert rig.parking.due_in() == IDLE_POLL_S


async def test_a_new_generation_is_read_when_prepared() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.rebalance([1, 2])
    rig.rebalancing = True
    # A batch taken before the rebalance still routes with the lanes it was
    # taken under (Faust waits for it before handing partitions over)...
    assert not rig.parking.parks(0, 1)
    assert rig.parking.parks(0, 2)  # ...a partition never read is interim: it parks
    rig.rebalancing = False
    # Once the rebalance is over, the lanes read before it route nothing any more.
    assert rig.parking.parks(0, 1)
    assert rig.parking.holds(0)
    assert rig.parking.due_in() == 0.0
    await rig.parking.prepare()
    assert rig.log.end_offset_calls[-2:] == [(TOPICS[0], (1, 2)), (TOPICS[1], (1, 2))]
    assert not rig.parking.parks(0, 1)
    assert not rig.parking.parks(0, 2)
    assert not rig.parking.holds(0)
    assert rig.parking.parks(0, 0)  # not owned any more: interim, never sent from here
    assert rig.log.writes == []


async def test_nothing_is_planned_while_a_rebalance_is_under_way() -> None:
    rig = Rig()
    rig.rebalancing = True
    assert rig.parking.due_in() == IDLE_POLL_S
    await rig.parking.prepare()
    await rig.parking.run()
    assert rig.log.end_offset_calls == []
    assert rig.log.reads == []
    assert rig.parking.parks(0, 0)  # interim
    assert rig.parking.due_in() == IDLE_POLL_S  # still not read while it lasts
    rig.rebalancing = False
    assert rig.parking.due_in() == 0.0
    await rig.parking.prepare()
    assert not rig.parking.parks(0, 0)


async def test_a_rebalance_during_the_reading_leaves_it_unplanned() -> None:
    rig = Rig()

    def rebalance_once() -> None:
        rig.log.on_end_offsets = None
        rig.generation += 1

    rig.log.on_end_offsets = rebalance_once
    await rig.parking.prepare()
    assert rig.parking.parks(0, 0)  # interim: what was read may be another's
    assert rig.parking.holds(0)
    assert rig.transports[0].calls == []
    await rig.parking.prepare()  # read again, for the new generation
    assert not rig.parking.parks(0, 0)
    assert not rig.parking.holds(0)


async def test_a_failure_to_read_is_retried_later_and_interim_meanwhile() -> None:
    rig = Rig()
    rig.log.seed(TOPICS[0], 0, [parked("a", 0)], at=START)
    rig.log.error = KafkaConnectionError()
    await rig.parking.prepare()
    assert rig.parking.parks(0, 0)  # its records are parked behind the log's
    assert rig.transports[0].calls == []
    calls = len(rig.log.end_offset_calls)
    rig.log.error = None
    assert 0.0 < rig.parking.due_in() <= IDLE_POLL_S
    await rig.parking.prepare()  # within the backoff: nothing read
    assert len(rig.log.end_offset_calls) == calls
    rig.clock.advance(60)
    assert rig.parking.due_in() == 0.0
    await rig.parking.prepare()
    assert rig.accepted() == [b"a#0"]
    assert not rig.parking.parks(0, 0)


async def test_a_destination_whose_log_cannot_be_read_does_not_stop_the_other() -> None:
    rig = Rig()
    rig.log.seed(TOPICS[0], 0, [parked("a", n) for n in range(3)], at=START - 5)
    rig.log.seed(TOPICS[1], 1, [parked("b", n, 1) for n in range(2)], at=START - 5)
    rig.log.unreadable[TOPICS[1]] = KafkaConnectionError()
    await rig.parking.prepare()
    # One is planned and drained...
    assert rig.accepted(0) == [b"a#0", b"a#1", b"a#2"]
    assert rig.tables.parking[ONE, 0] == {"drained": 3, "paused": False}
    assert not rig.parking.parks(0, 0)
    # ...two's records are parked behind its log until it is read.
    assert rig.sent(1) == []
    assert rig.parking.parks(1, 0)
    assert rig.parking.parks(1, 1)
    await rig.parking.park(1, [(1, parked("b", 2, 1))])
    assert rig.parking.due_in() > 0.0  # read again after a backoff
    del rig.log.unreadable[TOPICS[1]]
    rig.clock.advance(60)
    await rig.parking.prepare()
    assert rig.accepted(1) == [b"b#0", b"b#1", b"b#2"]
    assert not rig.parking.parks(1, 1)
    assert rig.accepted(0) == [b"a#0", b"a#1", b"a#2"]  # nothing sent twice


async def test_a_new_assignment_reads_the_table_and_the_logs_ends() -> None:
    rig = Rig()
    rig.log.seed(TOPICS[0], 0, [parked("a", n) for n in range(5)], at=START - 50)
    rig.log.seed(TOPICS[0], 1, [parked("b", 0, 1)], at=START - 20)
    rig.log.seed(TOPICS[1], 0, [parked("c", n) for n in range(3)], at=START - 70)
    rig.tables.parking[ONE, 0] = {"drained": 2, "paused": False}
    rig.tables.parking[ONE, 1] = {"drained": 0, "paused": True}
    # A parking topic created again: what the table says past its end was sent.
    rig.tables.parking[TWO, 0] = {"drained": 10, "paused": False}
    # Its stream refuses the first slice (prepare drains once planned): nothing moves.
    rig.transports[0].call_errors.append(GONE)
    await rig.parking.prepare()

    assert rig.sent() == [b"a#2"]  # from "drained" on
    one, two = rig.parking.statuses()
    assert (one.state, one.parked) == (DeliveryState.PARKED, 4)
    assert one.oldest_age_s == 50.0  # the record at "drained" of partition 0
    assert (two.state, two.parked, two.oldest_age_s) == (DeliveryState.DIRECT, 0, 0.0)
    assert rig.parking.parks(0, 0)
    assert rig.parking.parks(0, 1)
    assert not rig.parking.parks(1, 0)
    # Once it accepts: the lane is sent from "drained" on; the paused one is not.
    await rig.probe()
    assert rig.accepted() == [b"a#2", b"a#3", b"a#4"]
    assert rig.tables.parking[ONE, 0] == {"drained": 5, "paused": False}
    assert rig.tables.parking[ONE, 1] == {"drained": 0, "paused": True}
    one = rig.status(0)
    assert (one.state, one.reason, one.parked) == (
        DeliveryState.PAUSED,
        "paused in 1 partition(s)",
        1,
    )
    assert one.oldest_age_s == 20.0 + PROBE_S
    assert not rig.parking.parks(0, 0)
    assert rig.parking.parks(0, 1)
    assert rig.sent(1) == []


async def test_prepare_drains_a_slice_once_planned() -> None:
    rig = Rig()
    rig.log.seed(TOPICS[0], 0, [parked("a", n) for n in range(3)], at=START - 5)
    rig.tables.parking[ONE, 0] = {"drained": 1, "paused": False}
    await rig.parking.prepare()
    assert rig.accepted() == [b"a#1", b"a#2"]
    assert not rig.parking.parks(0, 0)


async def test_prepare_does_not_raise_when_the_assignment_cannot_be_read() -> None:
    """BUG: ``due_in`` and ``run`` never raise when the assignment callable does,
    but ``prepare`` calls it unguarded, and the batch loop (worker.batching)
    awaits ``prepare`` outside any ``try``: the batch loop stops (the worker
    exits). Backfiller.prepare guards the same call; Parking.prepare runs first."""
    rig = Rig()
    rig.assignment_error = RuntimeError("faust's state is not there yet")
    await rig.parking.prepare()
    rig.assignment_error = None
    await rig.parking.prepare()
    assert not rig.parking.parks(0, 0)


async def test_an_unreadable_log_does_not_hold_the_other_destinations_draining() -> None:
    """BUG: after a plan that could not read one destination's log, ``due_in``
    answers the plan's backoff (up to BACKOFF_MAX_S) before looking at the other
    destinations: their draining lanes and due probes wait for it, then get one
    DRAIN_BUDGET_S each retry, while every new record of theirs is parked."""
    rig = Rig()
    rig.log.unreadable[TOPICS[1]] = KafkaConnectionError()
    await rig.parking.prepare()
    await rig.parking.park(0, [(0, parked("a", 0))])  # one's stream refused a batch
    assert rig.parking.due_in() == 0.0  # one's lane is to drain
    await rig.parking.run()
    assert rig.accepted() == [b"a#0"]


async def test_a_destination_whose_log_cannot_be_read_holds_its_backfills() -> None:
    """BUG: once planned, a destination whose log could not be read has no lanes
    and counts as empty: ``holds`` is False (no fault), so worker.backfill sends
    its slices direct while the log may hold parked records not sent yet (a
    backfill record overtakes a parked record of its profile). Its status also
    says DIRECT with nothing parked, and a due probe clears its fault untried."""
    rig = Rig()
    rig.log.seed(TOPICS[1], 0, [parked("a", 0)], at=START - 5)
    rig.log.unreadable[TOPICS[1]] = KafkaConnectionError()
    await rig.parking.prepare()
    assert not rig.parking.holds(0)
    assert rig.parking.parks(1, 0)
    assert rig.parking.holds(1)


async def test_a_record_parked_in_an_interim_lane_of_a_topic_created_again_is_sent() -> None:
    """BUG (a record lost): the parking topic was created again (empty), the table
    still says drained=10. An interim lane takes drained=10 from the table; the
    record is written at offset 0 (park lowers the lane's cursor in memory only).
    The plan then reads end=1 and clamps drained to min(10, 1) = 1: the record
    counts as sent, is never sent, and the lane goes direct. (The same happens if
    anything replans between a park and the first slice of a planned lane: the
    clamped cursor is never stored.)"""
    rig = Rig()
    rig.tables.parking[ONE, 0] = {"drained": 10, "paused": False}
    assert rig.parking.parks(0, 0)  # interim
    await rig.parking.park(0, [(0, parked("a", 0))])
    assert rig.log.data(TOPICS[0], 0) == [b"a#0"]
    await rig.parking.prepare()
    await rig.parking.run()
    assert rig.accepted() == [b"a#0"]


def interrupt_next_plan(rig: Rig, begin: Callable[[], None]) -> None:
    """The next reading of the lanes sees a rebalance begin (``begin``)."""

    def once() -> None:
        rig.log.on_end_offsets = None
        begin()

    rig.log.on_end_offsets = once


async def test_an_interim_lane_keeps_parking_once_a_rebalance_begins() -> None:
    """BUG (reordering): ``_lane`` prefers the planned lanes whenever a rebalance
    is under way, even when they were read for an older generation than the
    batch in flight, and even when that batch's records were parked in an
    interim lane: the next record of the partition goes direct, ahead of the
    parked one."""
    rig = Rig()
    await rig.parking.prepare()  # generation 1
    rig.rebalance([0, 1])  # generation 2: its plan is interrupted by generation 3,
    interrupt_next_plan(rig, lambda: rig.rebalance([0, 1]))  # which is quickly over
    await rig.parking.prepare()
    assert rig.parking.parks(0, 0)  # a batch of generation 3: interim
    await rig.parking.park(0, [(0, parked("a", 0))])
    rig.generation += 1  # the next rebalance begins, the batch in flight goes on
    rig.rebalancing = True
    assert rig.parking.parks(0, 0), "a#1 would go direct, ahead of the parked a#0"


async def test_lanes_read_generations_ago_do_not_route_during_a_rebalance() -> None:
    """BUG (reordering): the lanes route during a rebalance whatever generation
    they were read at. Partition 0 went to another worker (which parked a record
    in its lane) and came back; the plan for it was interrupted by the next
    rebalance: the batch in flight routes with this worker's lane of generation
    1, which knows nothing of the record parked since, and goes direct."""
    rig = Rig(partitions=[0])
    await rig.parking.prepare()  # generation 1
    rig.rebalance([1])  # generation 2: partition 0 goes to another worker...
    interrupt_next_plan(rig, lambda: rig.rebalance([0]))  # (generation 3: back here)
    await rig.parking.prepare()
    rig.log.seed(TOPICS[0], 0, [parked("x", 0)], at=START)  # ...which parked x#0 there
    rig.tables.parking[ONE, 0] = {"drained": 0, "paused": False}

    def begin() -> None:
        rig.generation += 1
        rig.rebalancing = True

    interrupt_next_plan(rig, begin)
    await rig.parking.prepare()  # generation 3's plan, interrupted by generation 4
    assert rig.parking.parks(0, 0), "x#1 would go direct, ahead of the parked x#0"


# -- routing --------------------------------------------------------------------------------


async def test_after_failed_every_lane_of_the_destination_parks() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")
    assert rig.parking.parks(0, 0)
    assert rig.parking.parks(0, 1)
    assert not rig.parking.parks(1, 0)
    assert not rig.parking.parks(1, 1)
    assert rig.parking.holds(0)
    assert not rig.parking.holds(1)
    status = rig.status(0)
    assert status.state is DeliveryState.PARKED
    assert status.reason == "ResourceNotFoundException: stream gone"
    assert (status.parked, status.oldest_age_s) == (0, 0.0)
    assert rig.status(1).state is DeliveryState.DIRECT


async def test_park_writes_each_partition_in_order_and_counts_the_backlog() -> None:
    rig = Rig()
    await rig.parking.prepare()
    records = [
        (0, parked("a", 0)),
        (1, parked("b", 0, 1)),
        (0, parked("a", 1)),
        (0, parked("c", 0)),
        (1, parked("b", 1, 1)),
    ]
    await rig.parking.park(0, records)
    assert rig.log.data(TOPICS[0], 0) == [b"a#0", b"a#1", b"c#0"]
    assert rig.log.data(TOPICS[0], 1) == [b"b#0", b"b#1"]
    assert rig.log.lanes.get((TOPICS[1], 0)) is None
    assert rig.parking.parks(0, 0)
    assert rig.parking.parks(0, 1)
    assert not rig.parking.parks(1, 0)
    assert rig.parking.holds(0)
    rig.clock.advance(5)
    await rig.parking.park(0, [(1, parked("b", 2, 1))])
    status = rig.status(0)
    assert (status.state, status.reason, status.parked) == (DeliveryState.DRAINING, None, 6)
    assert status.oldest_age_s == 5.0  # the first parked, not the last
    assert rig.log.data(TOPICS[0], 1) == [b"b#0", b"b#1", b"b#2"]
    assert rig.transports[0].calls == []  # parking sends nothing itself


async def test_a_partition_not_owned_is_parked_and_never_drained_here() -> None:
    rig = Rig(partitions=[0])
    await rig.parking.prepare()
    await rig.parking.park(0, [(0, parked("a", 0)), (5, parked("b", 0, 5))])
    # Written to its lane (its owner sends it), behind whatever that lane holds.
    assert rig.log.data(TOPICS[0], 5) == [b"b#0"]
    assert rig.parking.parks(0, 5)
    assert rig.parking.due_in() == 0.0  # the lanes are read again
    await rig.parking.run()
    await rig.parking.run()
    assert rig.accepted() == [b"a#0"]
    assert [(d, p) for d, p, _ in rig.tables.writes] == [(ONE, 0)]
    assert all(partition != 5 for _, partition, _, _ in rig.log.reads)
    assert all(partition != 5 for _, partition, _ in rig.log.trims)
    assert rig.parking.parks(0, 5)


async def test_park_waits_for_every_write_before_raising_the_failure() -> None:
    """A write that lands after the failure is raised could land after the log's
    end is read again for the retry: the lane would not count it."""
    rig = Rig()
    await rig.parking.prepare()
    gate = asyncio.Event()
    rig.log.write_gates[TOPICS[0], 1] = gate
    rig.log.write_errors[TOPICS[0], 0] = KafkaTimeoutError()
    parking = asyncio.create_task(
        rig.parking.park(0, [(0, parked("a", 0)), (1, parked("b", 0, 1))])
    )
    for _ in range(10):
        await asyncio.sleep(0)
    raised_early = parking.done()  # partition 0 failed, partition 1 is still writing
    assert rig.log.writes == []
    gate.set()
    with pytest.raises(KafkaTimeoutError):
        await parking
    assert not raised_early
    assert rig.log.data(TOPICS[0], 1) == [b"b#0"]
    # Until the lanes are read again, both count as holding records.
    assert rig.parking.parks(0, 0)
    assert rig.parking.parks(0, 1)
    del rig.log.write_errors[TOPICS[0], 0]
    assert rig.parking.due_in() == 0.0
    await rig.parking.prepare()
    assert rig.accepted() == [b"b#0"]
    assert not rig.parking.parks(0, 0)
    assert not rig.parking.parks(0, 1)


# -- probe and drain ------------------------------------------------------------------------


async def parked_destination(rig: Rig) -> None:
    """Destination one parked at START, with records in both lanes."""
    await rig.parking.prepare()
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")
    await rig.parking.park(
        0,
        [
            (0, parked("a", 0)),
            (1, parked("b", 0, 1)),
            (0, parked("a", 1)),
            (0, parked("c", 0)),
            (1, parked("b", 1, 1)),
        ],
    )


async def test_no_probe_before_its_time() -> None:
    rig = Rig()
    await parked_destination(rig)
    rig.clock.advance(PROBE_S - 1)
    assert rig.parking.due_in() == 1.0
    await rig.parking.run()
    assert rig.transports[0].calls == []
    assert rig.status(0).state is DeliveryState.PARKED


async def test_a_probe_sends_the_oldest_records_then_every_lane_drains_in_order() -> None:
    rig = Rig()
    await parked_destination(rig)
    await rig.probe()
    # The probe: the first lane's records, and nothing else.
    assert rig.accepted() == [b"a#0", b"c#0", b"a#1"]
    assert rig.tables.parking[ONE, 0] == {"drained": 3, "paused": False}
    assert (ONE, 1) not in rig.tables.parking
    status = rig.status(0)
    assert (status.state, status.parked) == (DeliveryState.DRAINING, 2)
    assert not rig.parking.parks(0, 0)  # empty: direct again
    assert rig.parking.parks(0, 1)  # still behind its backlog
    # Then the other lanes, between batches.
    assert rig.parking.due_in() == 0.0
    await rig.parking.run()
    assert rig.accepted() == [b"a#0", b"c#0", b"a#1", b"b#0", b"b#1"]
    assert rig.tables.parking[ONE, 1] == {"drained": 2, "paused": False}
    assert not rig.parking.parks(0, 0)
    assert not rig.parking.parks(0, 1)
    assert not rig.parking.holds(0)
    status = rig.status(0)
    assert (status.state, status.reason, status.parked, status.oldest_age_s) == (
        DeliveryState.DIRECT,
        None,
        0,
        0.0,
    )
    assert rig.parking.due_in() == IDLE_POLL_S
    assert rig.tables.flushes >= 2
    assert rig.sent(1) == []


async def test_a_long_lane_drains_a_slice_at_a_time() -> None:
    rig = Rig()
    await rig.parking.prepare()
    records = [(0, parked(f"k{n}", n)) for n in range(SLICE + 7)]
    await rig.parking.park(0, records)
    # Each slice takes the whole budget: one slice per turn between batches.
    rig.transports[0].on_call = lambda _batch: rig.clock.advance(DRAIN_BUDGET_S)
    await rig.parking.run()
    assert [len(call.records) for call in rig.transports[0].calls] == [SLICE]
    assert rig.tables.parking[ONE, 0]["drained"] == SLICE
    assert rig.status(0).parked == 7
    assert rig.parking.parks(0, 0)
    await rig.parking.run()
    assert rig.accepted() == [p.record.data for _, p in records]
    assert rig.tables.parking[ONE, 0]["drained"] == SLICE + 7
    assert not rig.parking.parks(0, 0)


async def test_a_failing_probe_moves_nothing_and_waits_for_the_next() -> None:
    rig = Rig()
    await parked_destination(rig)
    rig.transports[0].call_errors.append(
        TransportError("ResourceNotFoundException", "still gone", fatal=True)
    )
    await rig.probe()
    assert len(rig.transports[0].calls) == 1  # one attempt
    assert rig.accepted() == []
    assert rig.tables.parking.get((ONE, 0), {"drained": 0})["drained"] == 0
    status = rig.status(0)
    assert (status.state, status.parked) == (DeliveryState.PARKED, 5)
    assert status.reason == "ResourceNotFoundException: still gone"
    assert status.oldest_age_s == PROBE_S  # still the first record
    assert rig.parking.parks(0, 0)
    # The next probe is one park_probe_s later.
    rig.clock.advance(PROBE_S - 0.5)
    assert rig.parking.due_in() == 0.5
    await rig.parking.run()
    assert len(rig.transports[0].calls) == 1
    rig.clock.advance(0.5)
    await rig.parking.run()
    assert rig.accepted() == [b"a#0", b"c#0", b"a#1"]


async def test_a_probe_gives_up_after_its_first_failed_wave() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")
    await rig.parking.park(0, [(0, parked("a", 0)), (0, parked("a", 1))])
    rig.transports[0].record_errors[b"a#0"] = deque([THROTTLED, THROTTLED])
    await rig.probe()
    assert rig.sent() == [b"a#0"]  # no retry
    status = rig.status(0)
    assert status.state is DeliveryState.PARKED
    assert status.reason is not None
    assert THROTTLED in status.reason


async def test_a_partly_accepted_slice_resends_only_what_was_not_accepted() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")
    await rig.parking.park(0, [(0, parked("a", 0)), (0, parked("b", 0)), (0, parked("c", 0))])
    rig.transports[0].record_errors[b"b#0"] = deque([THROTTLED])
    await rig.probe()
    assert rig.accepted() == [b"a#0", b"c#0"]
    # "drained" moves over the contiguous prefix only: b#0 (offset 1) is not sent.
    assert rig.tables.parking[ONE, 0] == {"drained": 1, "paused": False}
    status = rig.status(0)
    assert status.parked == 1  # c#0 is not counted again
    assert rig.parking.parks(0, 0)
    # Records got through: the rest is drained, without c#0.
    rig.clock.advance(PROBE_S)
    await rig.parking.run()
    assert [[data for data, _ in call.records] for call in rig.transports[0].calls] == [
        [b"a#0", b"b#0", b"c#0"],
        [b"b#0"],  # c#0 was accepted: not sent again
    ]
    assert rig.accepted() == [b"a#0", b"c#0", b"b#0"]
    assert rig.tables.parking[ONE, 0] == {"drained": 3, "paused": False}
    assert rig.status(0).state is DeliveryState.DIRECT
    assert not rig.parking.parks(0, 0)


async def test_a_key_left_behind_keeps_its_later_records_behind_it() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")
    records = [parked("a", 0), parked("b", 0), parked("a", 1), parked("b", 1)]
    await rig.parking.park(0, [(0, r) for r in records])
    rig.transports[0].record_errors[b"a#0"] = deque([THROTTLED])
    await rig.probe()
    assert rig.accepted() == [b"b#0"]  # one wave: a#0 failed, a#1 waits behind it
    assert rig.tables.parking[ONE, 0]["drained"] == 0
    assert rig.status(0).parked == 3
    await rig.parking.run()
    assert rig.accepted() == [b"b#0", b"a#0", b"b#1", b"a#1"]
    assert rig.sent().count(b"b#0") == 1
    assert rig.tables.parking[ONE, 0]["drained"] == 4


async def test_parked_records_the_stream_never_takes_are_dead_lettered() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")
    big = parked("big", 1, data=b"x" * (2 * MIB))
    await rig.parking.park(0, [(0, parked("a", 0)), (0, big), (0, parked("c", 2))])
    await rig.probe()
    assert rig.accepted() == [b"a#0", b"c#2"]
    [(key, letter)] = rig.letters.sent
    assert key == b"big"
    assert letter["reason"] == "record_too_large"
    assert letter["destination"] == ONE
    assert letter["stream"] == "stream-one"
    assert letter["partitionKey"] == "big"
    assert letter["source"] == {"topic": INPUT, "partition": 0, "offset": 101}
    assert rig.tables.parking[ONE, 0]["drained"] == 3
    assert rig.status(0).state is DeliveryState.DIRECT


async def test_a_record_kinesis_refuses_alone_is_dead_lettered_when_draining() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.transports[0].invalid.add(b"b#0")
    await rig.parking.park(0, [(0, parked("a", 0)), (0, parked("b", 0)), (0, parked("c", 0))])
    await rig.parking.run()  # a drain (not a probe): the writer isolates the culprit
    assert sorted(rig.accepted()) == [b"a#0", b"c#0"]
    [(key, letter)] = rig.letters.sent
    assert (key, letter["reason"], letter["destination"]) == (b"b", "rejected_by_kinesis", ONE)
    assert rig.tables.parking[ONE, 0]["drained"] == 3
    assert rig.status(0).state is DeliveryState.DIRECT


async def test_a_record_kinesis_refuses_does_not_keep_the_destination_parked() -> None:
    """A parked record whose call Kinesis answers with ValidationException (the
    writer isolates such a record to reject it alone) must not wedge the probe:
    the oldest records are probed again and again, each time in one wave."""
    rig = Rig()
    await rig.parking.prepare()
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")
    rig.transports[0].invalid.add(b"b#0")
    await rig.parking.park(0, [(0, parked("a", 0)), (0, parked("b", 0)), (0, parked("c", 0))])
    await rig.probe()  # isolates the culprit: the others are taken, it is dead-lettered
    assert [letter["reason"] for _, letter in rig.letters.sent] == ["rejected_by_kinesis"]
    assert sorted(rig.accepted()) == [b"a#0", b"c#0"]
    assert rig.status(0).state is DeliveryState.DIRECT


async def test_a_draining_lane_that_fails_parks_the_destination_again() -> None:
    rig = Rig()
    await rig.parking.prepare()
    await rig.parking.park(0, [(0, parked("a", 0)), (1, parked("b", 0, 1))])
    assert rig.status(0).state is DeliveryState.DRAINING
    rig.transports[0].call_errors.append(GONE)
    await rig.parking.run()
    assert len(rig.transports[0].calls) == 1  # the first lane; the second waits
    status = rig.status(0)
    assert (status.state, status.reason, status.parked) == (
        DeliveryState.PARKED,
        str(GONE),
        2,
    )
    assert rig.parking.parks(0, 0)
    assert rig.parking.parks(0, 1)


async def test_a_probe_with_nothing_parked_clears_the_fault() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")  # from a backfill
    await rig.probe()
    assert rig.transports[0].calls == []
    assert rig.status(0).state is DeliveryState.DIRECT
    assert not rig.parking.parks(0, 0)


async def test_a_partition_lost_during_a_slice_stores_nothing_for_it() -> None:
    rig = Rig()
    await rig.parking.prepare()
    await rig.parking.park(0, [(0, parked("a", 0)), (0, parked("b", 0))])
    rig.transports[0].on_call = lambda _batch: rig.rebalance([1])
    await rig.parking.run()
    assert rig.accepted() == [b"a#0", b"b#0"]  # the stream took them meanwhile
    assert rig.tables.writes == []  # but the new owner sends them: nothing stored here
    assert rig.letters.sent == []
    assert rig.parking.due_in() == 0.0  # read again before the next batch
    rig.transports[0].on_call = None
    await rig.parking.prepare()
    assert not rig.parking.parks(0, 1)
    assert rig.parking.parks(0, 0)  # interim: not this worker's lane any more
    await rig.parking.run()
    assert len(rig.transports[0].calls) == 1  # not sent again from here
    assert rig.tables.writes == []


async def test_lanes_no_longer_owned_are_not_sent_when_planning_is_interrupted() -> None:
    """A rebalance away from partition 0, and another one beginning while the new
    assignment's lanes are read: nothing of partition 0 may be sent by this worker
    any more (its new owner sends it)."""
    rig = Rig(partitions=[0])
    await rig.parking.prepare()
    await rig.parking.park(0, [(0, parked("a", 0)), (0, parked("b", 0))])
    rig.rebalance([1])

    def rebalance_again() -> None:
        rig.log.on_end_offsets = None
        rig.generation += 1

    rig.log.on_end_offsets = rebalance_again
    await rig.parking.run()
    assert rig.sent() == []


async def test_records_stored_by_a_write_that_failed_are_not_sent_after_newer_ones() -> None:
    """Kafka stored the parked record but its reply was lost (a timeout with
    acks=all): the batch is retried. The record now sits in the lane; it must not
    be sent after the newer records of its profile that follow it."""
    rig = Rig(partitions=[0])
    await rig.parking.prepare()
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")
    rig.log.lost_reply = KafkaTimeoutError()
    with pytest.raises(KafkaTimeoutError):
        await rig.parking.park(0, [(0, parked("a", 1))])
    # The stream is back; the batch loop prepares and retries the batch.
    rig.clock.advance(PROBE_S)
    await rig.parking.prepare()
    await rig.parking.run()
    direct = not rig.parking.parks(0, 0)
    retried = [parked("a", 1), parked("a", 2)]
    if direct:  # as the pipeline routes them
        await rig.writers[0].put_all([p.record for p in retried])
    else:
        await rig.parking.park(0, [(0, p) for p in retried])
    # Later: parked once more, then drained.
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")
    await rig.parking.park(0, [(0, parked("a", 3))])
    for _ in range(3):
        rig.clock.advance(PROBE_S)
        await rig.parking.run()
    sent = rig.accepted()
    assert sent[-1] == b"a#3"
    assert sent == sorted(sent), f"an older record of the profile after a newer one: {sent}"


# -- pause and resume -----------------------------------------------------------------------


async def test_a_paused_lane_parks_is_stored_and_is_not_drained() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.parking.pause(0, 1, True)
    assert rig.tables.parking[ONE, 1] == {"drained": 0, "paused": True}
    rig.parking.pause(0, 1, True)  # again: nothing more written
    assert len(rig.tables.writes) == 1
    assert rig.parking.parks(0, 1)
    assert not rig.parking.parks(0, 0)
    assert not rig.parking.parks(1, 1)  # the other destination's lane
    assert rig.parking.holds(0)
    await rig.parking.park(0, [(1, parked("b", 0, 1))])
    assert rig.parking.due_in() == IDLE_POLL_S
    await rig.parking.run()
    assert rig.transports[0].calls == []
    status = rig.status(0)
    assert (status.state, status.reason, status.parked) == (
        DeliveryState.PAUSED,
        "paused in 1 partition(s)",
        1,
    )
    rig.parking.pause(0, 0, True)
    assert rig.status(0).reason == "paused by a command"


async def test_resume_drains_the_lane_then_goes_direct() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.parking.pause(0, 1, True)
    await rig.parking.park(0, [(1, parked("b", 0, 1)), (1, parked("b", 1, 1))])
    rig.parking.pause(0, 1, False)
    assert rig.tables.parking[ONE, 1] == {"drained": 0, "paused": False}
    assert rig.parking.parks(0, 1)  # behind its backlog until drained
    assert rig.parking.due_in() == 0.0
    await rig.parking.run()
    assert rig.accepted() == [b"b#0", b"b#1"]
    assert rig.tables.parking[ONE, 1] == {"drained": 2, "paused": False}
    assert not rig.parking.parks(0, 1)
    assert rig.status(0).state is DeliveryState.DIRECT


async def test_a_paused_lane_is_not_probed() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.parking.pause(0, 0, True)
    await rig.parking.park(0, [(0, parked("a", 0))])
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")
    await rig.probe()
    assert rig.transports[0].calls == []
    assert rig.parking.parks(0, 0)


# -- statuses and holds ---------------------------------------------------------------------


async def test_statuses_follow_the_destinations_states() -> None:
    rig = Rig()
    assert [s.state for s in rig.parking.statuses()] == [DeliveryState.DIRECT] * 2
    await rig.parking.prepare()
    assert [
        (s.name, s.state, s.reason, s.parked, s.oldest_age_s) for s in rig.parking.statuses()
    ] == [
        (ONE, DeliveryState.DIRECT, None, 0, 0.0),
        (TWO, DeliveryState.DIRECT, None, 0, 0.0),
    ]
    rig.parking.failed(1, "AccessDeniedException: no")
    await rig.parking.park(1, [(0, parked("a", 0)), (1, parked("b", 0, 1))])
    rig.clock.advance(3)
    await rig.parking.park(1, [(1, parked("b", 1, 1))])
    rig.clock.advance(4)
    assert rig.parking.statuses()[1] == type(rig.status(1))(
        TWO, DeliveryState.PARKED, "AccessDeniedException: no", 3, 7.0
    )
    assert rig.status(0).state is DeliveryState.DIRECT


async def test_due_in_polls_when_the_assignment_cannot_be_read() -> None:
    rig = Rig()
    await rig.parking.prepare()
    rig.parking.failed(0, "ResourceNotFoundException: stream gone")
    rig.clock.advance(PROBE_S)
    rig.assignment_error = RuntimeError("faust's state is not there yet")
    assert rig.parking.due_in() == IDLE_POLL_S
    await rig.parking.run()  # never raises either: retried after a backoff
    assert rig.transports[0].calls == []
    rig.assignment_error = None
    rig.clock.advance(IDLE_POLL_S)
    assert rig.parking.due_in() == 0.0  # the probe


async def test_holds_while_anything_of_the_destination_is_parked_or_would_be() -> None:
    rig = Rig()
    assert rig.parking.holds(0)  # not planned
    await rig.parking.prepare()
    assert not rig.parking.holds(0)
    await rig.parking.park(0, [(1, parked("b", 0, 1))])
    assert rig.parking.holds(0)
    assert not rig.parking.holds(1)
    await rig.parking.run()
    assert not rig.parking.holds(0)
    rig.parking.pause(0, 0, True)
    assert rig.parking.holds(0)
    rig.parking.pause(0, 0, False)
    assert not rig.parking.holds(0)
    rig.parking.failed(0, "x")
    assert rig.parking.holds(0)


# -- draining more than a slice, and trimming what was sent --------------------------------------


async def test_a_lane_of_more_than_a_slice_empties_in_one_turn_within_the_budget() -> None:
    rig = Rig()
    await rig.parking.prepare()
    await rig.parking.park(0, [(0, parked(f"k{n % 7}", n)) for n in range(SLICE * 2 + 10)])
    await rig.parking.run()
    assert len(rig.accepted()) == SLICE * 2 + 10
    assert rig.status(0).state is DeliveryState.DIRECT
    assert rig.log.trims == [(TOPICS[0], 0, SLICE * 2 + 10)]
    assert rig.tables.parking[ONE, 0]["drained"] == SLICE * 2 + 10


async def test_draining_stops_for_the_next_batch_once_the_budget_is_spent() -> None:
    rig = Rig()
    await rig.parking.prepare()
    await rig.parking.park(0, [(0, parked(f"k{n % 7}", n)) for n in range(SLICE * 2 + 10)])
    rig.transports[0].on_call = lambda _batch: rig.clock.advance(DRAIN_BUDGET_S)
    await rig.parking.run()
    assert len(rig.accepted()) == SLICE  # one slice, then the batches' turn
    assert rig.log.trims == []
    await rig.parking.run()
    await rig.parking.run()
    assert len(rig.accepted()) == SLICE * 2 + 10
    assert rig.log.trims == [(TOPICS[0], 0, SLICE * 2 + 10)]


async def test_the_budget_is_checked_after_each_slice_not_each_round() -> None:
    rig = Rig(partitions=[0, 1, 2])
    await rig.parking.prepare()
    await rig.parking.park(
        0, [(p, parked(f"k{p}.{n}", n, p)) for p in (0, 1, 2) for n in range(SLICE + 1)]
    )
    rig.transports[0].on_call = lambda _batch: rig.clock.advance(DRAIN_BUDGET_S)
    await rig.parking.run()
    assert [len(call.records) for call in rig.transports[0].calls] == [SLICE]
    assert rig.status(0).parked == 2 * SLICE + 3
    await rig.parking.run()
    assert len(rig.transports[0].calls) == 2


async def test_a_trim_that_fails_costs_nothing_but_the_space() -> None:
    rig = Rig()
    await rig.parking.prepare()
    await rig.parking.park(0, [(0, parked("a", 0))])
    rig.log.trim_error = OSError("broker gone")
    await rig.parking.run()
    assert rig.accepted() == [b"a#0"]
    assert rig.status(0).state is DeliveryState.DIRECT
    assert not rig.parking.parks(0, 0)
