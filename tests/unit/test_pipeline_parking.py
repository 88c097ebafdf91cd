"""BatchProcessor with a router (worker.parking): a destination whose stream refuses
its records has them parked while the others take theirs; parked lanes keep their
order; pause and resume commands.

test_pipeline's world (its settings, fake tables, dead letters and transports)
with a real ``Parking`` on test_parking's fake log and table.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest

from tests.unit.test_parking import TOPICS, Clock, FakeLog
from tests.unit.test_parking import FakeTables as ParkingTable
from tests.unit.test_pipeline import (
    ECID,
    ECID_MAP,
    QUALIFICATIONS,
    SEG_A,
    SEG_B,
    SETTINGS,
    T0,
    FakeDeadLetters,
    FakeTables,
    FakeTransport,
    World,
    at,
)
from worker.control import Action, encode_command
from worker.kinesis import KinesisWriter, PutReply, Record, TransportError, WriterConfig
from worker.membership import SegmentState
from worker.parking import Parking
from worker.pipeline import BatchProcessor, Destination, InputMessage, Parked, Router
from worker.vocabulary import DeliveryState, ExportStatus

GONE = TransportError("ResourceNotFoundException", "stream gone", fatal=True)
ONE, TWO = "Dest One", "Dest Two"


class RefusingTransport(FakeTransport):
    """test_pipeline's transport, refusing every call with ``error`` when set."""

    def __init__(self) -> None:
        super().__init__()
        self.error: TransportError | None = None
        self.attempts: list[list[bytes]] = []

    async def put_records(
        self, stream: str, records: Sequence[tuple[bytes, str]]
    ) -> list[PutReply]:
        self.attempts.append([data for data, _ in records])
        if self.error is not None:
            raise self.error
        return await super().put_records(stream, records)


class ParkingWorld(World):
    """World with a router: input partitions 3 (World's messages), 4 and 5 owned."""

    def __init__(self) -> None:
        self.tables = FakeTables()
        self.dead_letters = FakeDeadLetters(self.tables)
        self.refusing = [RefusingTransport() for _ in SETTINGS.destinations]
        self.transports: list[FakeTransport] = list(self.refusing)
        config = WriterConfig(backoff_base_s=0.0, backoff_max_s=0.0, fatal_retry_s=0.0)
        self.writers = [
            KinesisWriter(d.stream, t, config)
            for d, t in zip(SETTINGS.destinations, self.transports, strict=True)
        ]
        destinations = [
            Destination(d, w) for d, w in zip(SETTINGS.destinations, self.writers, strict=True)
        ]
        self.clock = Clock()
        self.log = FakeLog(self.clock)
        self.table = ParkingTable()
        self.generation = 1
        self.parking = Parking(
            destinations,
            self.table,
            self.log,
            self.dead_letters,
            lambda: (self.generation, frozenset({3, 4, 5})),
            lambda: self.generation,
            TOPICS,
            clock=self.clock,
        )
        self.processor = BatchProcessor(
            SETTINGS, destinations, self.tables, self.dead_letters, router=self.parking
        )
        self.offsets: dict[str, int] = {}

    def at(self, partition: int, message: InputMessage) -> InputMessage:
        """``message`` in another input partition."""
        return InputMessage(
            message.topic, partition, message.offset, message.key, message.value, message.scope
        )

    def command(self, action: Action, destination: str, partition: int = 3) -> InputMessage:
        value = encode_command(action, f"{action.value}-1", destination)
        return self.at(partition, self.message(SETTINGS.control_topic, b"cmd", value))

    def lane(self, index: int, partition: int) -> list[Parked]:
        return self.log.lanes.get((TOPICS[index], partition), [])


@pytest.fixture
def pworld() -> ParkingWorld:
    return ParkingWorld()


def check_router(parking: Parking) -> Router:
    return parking  # mypy checks Parking against the pipeline's protocol


async def test_records_are_parked_until_the_lanes_are_planned(pworld: ParkingWorld) -> None:
    """Before its lanes are read, a batch is not held (a rebalance waits for it):
    its records are parked behind whatever the logs hold, none sent direct."""
    earlier = Parked(Record(b"{}", "p0"), ExportStatus.REALIZED, {}, b"p0")
    pworld.log.seed(TOPICS[0], 3, [earlier], at=pworld.clock())
    report = await pworld.run(pworld.q("p1", SEG_B, "realized", T0, ECID_MAP))
    assert [p.key for p in pworld.lane(0, 3)] == [b"p0", b"p1"]
    assert [p.key for p in pworld.lane(1, 3)] == [b"p1"]
    assert pworld.refusing[0].attempts == []
    assert pworld.refusing[1].attempts == []
    # The batch is done all the same.
    assert report.exports == 0
    assert pworld.dead_letters.sent == []
    assert pworld.tables.states("p1") == {SEG_B: SegmentState(True, at(T0))}
    # Once planned, the lanes are drained in order, then go direct.
    await pworld.parking.prepare()
    assert [key for _, key in pworld.one] == ["p0", ECID]
    assert len(pworld.two) == 1
    assert not pworld.parking.parks(0, 3)
    assert not pworld.parking.parks(1, 3)


async def test_a_refusing_stream_has_its_records_parked_the_other_takes_its_own(
    pworld: ParkingWorld,
) -> None:
    await pworld.parking.prepare()
    pworld.refusing[0].error = GONE
    report = await pworld.run(pworld.q("p1", SEG_B, "realized", T0, ECID_MAP))
    # Destination two took its record; one's stream was tried once, then parked.
    assert len(pworld.two) == 1
    assert len(pworld.refusing[0].attempts) == 1
    assert pworld.one == []
    [parked] = pworld.lane(0, 3)
    assert parked.status is ExportStatus.REALIZED
    assert parked.source == {"topic": QUALIFICATIONS, "partition": 3, "offset": 100}
    assert parked.key == b"p1"
    assert parked.record.partition_key == ECID
    assert SEG_B in orjson.loads(parked.record.data)["segmentMembership"]["ups"]
    assert pworld.lane(1, 3) == []
    # The batch is done: state written, one export counted, no dead letter.
    assert report.exports == 1
    assert pworld.dead_letters.sent == []
    assert pworld.tables.states("p1") == {SEG_B: SegmentState(True, at(T0))}
    one, two = pworld.parking.statuses()
    assert (one.state, one.reason, one.parked) == (DeliveryState.PARKED, str(GONE), 1)
    assert two.state is DeliveryState.DIRECT


async def test_a_parked_destination_gets_its_records_parked_without_a_put(
    pworld: ParkingWorld,
) -> None:
    await pworld.parking.prepare()
    pworld.parking.failed(0, str(GONE))
    await pworld.run(
        pworld.q("p1", SEG_B, "realized", T0), pworld.at(4, pworld.q("p2", SEG_A, "realized", T0))
    )
    assert pworld.refusing[0].attempts == []
    assert [p.key for p in pworld.lane(0, 3)] == [b"p1"]
    assert [p.key for p in pworld.lane(0, 4)] == [b"p2"]
    assert len(pworld.two) == 1


async def test_a_partition_with_parked_records_parks_the_new_ones_behind_them(
    pworld: ParkingWorld,
) -> None:
    await pworld.parking.prepare()
    earlier = Parked(Record(b"{}", "p0"), ExportStatus.REALIZED, {}, b"p0")
    await pworld.parking.park(0, [(3, earlier)])
    await pworld.run(
        pworld.q("p1", SEG_A, "realized", T0),
        pworld.at(4, pworld.q("p2", SEG_A, "realized", T0)),
        pworld.q("p3", SEG_A, "realized", T0),
    )
    # Partition 3 is behind its backlog: parked, in order; partition 4 goes direct.
    assert [p.key for p in pworld.lane(0, 3)] == [b"p0", b"p1", b"p3"]
    assert [key for _, key in pworld.one] == ["p2"]
    assert len(pworld.refusing[0].attempts) == 1


async def test_a_pause_command_pauses_the_destination_in_the_messages_partition(
    pworld: ParkingWorld,
) -> None:
    await pworld.parking.prepare()
    report = await pworld.run(pworld.command(Action.PAUSE, ONE, partition=5))
    assert report.outcomes == {"taken": 1}
    assert pworld.table.parking == {(ONE, 5): {"drained": 0, "paused": True}}
    assert pworld.parking.parks(0, 5)
    assert not pworld.parking.parks(0, 3)
    assert not pworld.parking.parks(1, 5)
    await pworld.run(pworld.at(5, pworld.q("p1", SEG_A, "realized", T0)))
    assert pworld.refusing[0].attempts == []
    assert [p.key for p in pworld.lane(0, 5)] == [b"p1"]
    status = pworld.parking.statuses()[0]
    assert (status.state, status.parked) == (DeliveryState.PAUSED, 1)

    report = await pworld.run(pworld.command(Action.RESUME, ONE, partition=5))
    assert report.outcomes == {"taken": 1}
    assert pworld.table.parking[ONE, 5]["paused"] is False
    await pworld.parking.run()  # between batches: the lane is drained
    assert [key for _, key in pworld.one] == ["p1"]
    assert not pworld.parking.parks(0, 5)


async def test_a_pause_command_goes_to_the_router_for_its_partition(
    pworld: ParkingWorld,
) -> None:
    calls: list[tuple[int, int, bool]] = []

    class Recording:
        def parks(self, destination: int, partition: int) -> bool:
            return False

        def failed(self, destination: int, reason: str | None) -> None:
            raise AssertionError("no failure")

        async def park(self, destination: int, records: Sequence[tuple[int, Parked]]) -> None:
            raise AssertionError("nothing parked")

        def pause(self, destination: int, partition: int, paused: bool) -> None:
            calls.append((destination, partition, paused))

    router: Router = Recording()
    processor = BatchProcessor(
        SETTINGS,
        [Destination(d, w) for d, w in zip(SETTINGS.destinations, pworld.writers, strict=True)],
        pworld.tables,
        pworld.dead_letters,
        router=router,
    )
    await processor.process(
        [
            pworld.command(Action.PAUSE, TWO, partition=4),
            pworld.command(Action.RESUME, ONE, partition=5),
        ]
    )
    assert calls == [(1, 4, True), (0, 5, False)]


async def test_a_pause_of_an_unknown_destination_is_dead_lettered(pworld: ParkingWorld) -> None:
    await pworld.parking.prepare()
    report = await pworld.run(pworld.command(Action.PAUSE, "Nowhere"))
    assert report.outcomes == {"dead_lettered": 1}
    [(_, letter)] = pworld.dead_letters.sent
    assert letter["reason"] == "unknown_destination"
    assert "Nowhere" in letter["detail"]
    assert pworld.table.writes == []
    assert not pworld.parking.parks(0, 3)
    assert not pworld.parking.parks(1, 3)
