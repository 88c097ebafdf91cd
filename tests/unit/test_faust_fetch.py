"""worker.faust.fetch: the thread fetches the set Faust asked for; offsets without a record.

The first tests run Faust's own consumer object (no broker is needed to call
its fetch step): recovery empties the live active-partition set while the
consumer thread is fetching, as it does after a restart.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from worker import faust as fixes
from worker.faust import fetch

IN = TP("in", 0)
CHANGELOG = TP("app-profiles-changelog", 0)


class Assignment:
    """Stands for aiokafka's Assignment (weakly referenced)."""


def record(tp: TP, offset: int) -> Any:
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=b"v",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=1,
        headers=[],
    )


@pytest.fixture
async def consumer() -> Any:
    fixes.apply()
    app = faust.App(f"t-fetch-{id(object())}", broker="kafka://127.0.0.1:1", store="memory://")
    found: Any = app.consumer
    found.highwater = lambda tp: 0
    return found


def thread_that_sees_recovery_pause(consumer: Any, prefetched: dict[TP, list[Any]]) -> list[Any]:
    """A consumer thread like aiokafka's: while it waits for records, recovery
    pauses the changelog (the live set is now empty); it then returns what
    aiokafka's ``fetched_records`` would: records of the partitions it was
    given, or of EVERY partition when that set is empty."""
    asked: list[Any] = []

    async def getmany(active_partitions: Any, timeout: float) -> dict[TP, list[Any]]:  # noqa: ASYNC109
        consumer.pause_partitions({CHANGELOG})
        await asyncio.sleep(0)
        asked.append(set(active_partitions))
        return {
            tp: records
            for tp, records in prefetched.items()
            if not active_partitions or tp in active_partitions
        }

    consumer._getmany = getmany
    return asked


async def test_faust_alone_hands_the_thread_a_set_that_recovery_empties(consumer: Any) -> None:
    """The bug (faust-streaming 0.15.3): the thread sees an empty set, so aiokafka
    returns the prefetched input records, and Faust drops them all."""
    consumer._active_partitions = {CHANGELOG}
    asked = thread_that_sees_recovery_pause(consumer, {IN: [record(IN, 0), record(IN, 1)]})
    original: Any = fetch.original_wait_next_records
    records, active = await original(consumer, 0.1)
    assert asked == [set()]  # the thread saw the live set, emptied
    assert IN in records  # aiokafka handed over (and moved past) the input records
    delivered = [tp for tp in records if tp in active or tp in consumer._buffered_partitions]
    assert delivered == []  # ... and Faust's filter drops every one of them


async def test_the_thread_fetches_the_set_faust_asked_for(consumer: Any) -> None:
    consumer._active_partitions = {CHANGELOG}
    asked = thread_that_sees_recovery_pause(consumer, {IN: [record(IN, 0)]})
    records, _ = await consumer._wait_next_records(0.1)
    assert asked == [{CHANGELOG}]
    assert records == {}  # nothing of the input partition was taken from aiokafka


async def test_an_empty_set_fetches_nothing(consumer: Any) -> None:
    consumer._active_partitions = set()
    asked = thread_that_sees_recovery_pause(consumer, {IN: [record(IN, 0)]})
    records, _ = await consumer._wait_next_records(0.1)
    assert records == {}
    assert asked == []


class PartitionState:
    def __init__(self, position: int) -> None:
        self.has_valid_position = True
        self.position = position


class AioKafkaConsumer:
    """What _seek_back reads of aiokafka's consumer, in its thread: positions."""

    def __init__(self, positions: dict[TP, int]) -> None:
        self.states = {tp: PartitionState(p) for tp, p in positions.items()}
        self.sought: list[tuple[TP, int]] = []
        assignment = type("A", (), {"tps": set(positions), "state_value": self.states.get})()
        self._subscription = type("S", (), {"subscription": type("X", (), {})()})()
        self._subscription.subscription.assignment = assignment

    def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))
        self.states[tp].position = offset


class Thread:
    def __init__(self, aiokafka: AioKafkaConsumer) -> None:
        self.aiokafka = aiokafka

    def _ensure_consumer(self) -> AioKafkaConsumer:
        return self.aiokafka

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)


async def test_records_of_a_partition_paused_during_the_fetch_are_not_delivered(
    consumer: Any,
) -> None:
    """They must not reach the agent while their partition recovers; their
    partition goes back to where they began, so they are fetched again."""
    consumer._active_partitions = {IN, CHANGELOG}
    consumer._thread = Thread(AioKafkaConsumer({IN: 2, CHANGELOG: 6}))
    prefetched = {IN: [record(IN, 0), record(IN, 1)], CHANGELOG: [record(CHANGELOG, 5)]}
    asked = thread_that_sees_recovery_pause(consumer, prefetched)
    delivered = [(tp, message.offset) async for tp, message in consumer.getmany(0.1)]
    assert asked == [{IN, CHANGELOG}]
    assert delivered == [(IN, 0), (IN, 1)]
    assert consumer._thread.aiokafka.sought == [(CHANGELOG, 5)]


async def test_records_that_come_back_after_the_flow_stopped_are_fetched_again(
    consumer: Any,
) -> None:
    """A recovery sought a changelog partition to 0 and has not resumed the flow
    yet when a fetch brings 0..2 back: Faust drops them; without the seek back
    its recovery would wait forever for offsets aiokafka moved past."""
    consumer._active_partitions = {CHANGELOG}
    consumer._thread = Thread(AioKafkaConsumer({CHANGELOG: 3}))

    async def getmany(active_partitions: Any, timeout: float) -> dict[TP, list[Any]]:  # noqa: ASYNC109
        consumer.flow_active = False  # the rebalance stopped the flow meanwhile
        return {CHANGELOG: [record(CHANGELOG, n) for n in range(3)]}

    consumer._getmany = getmany
    records, _ = await consumer._wait_next_records(0.1)
    assert records == {}
    assert consumer._thread.aiokafka.sought == [(CHANGELOG, 0)]


async def test_a_partition_sought_meanwhile_is_left_where_it_was_put(consumer: Any) -> None:
    consumer._active_partitions = {IN}
    consumer._thread = Thread(AioKafkaConsumer({CHANGELOG: 40}))  # not where 5 left it

    async def getmany(active_partitions: Any, timeout: float) -> dict[TP, list[Any]]:  # noqa: ASYNC109
        return {CHANGELOG: [record(CHANGELOG, 5)]}

    consumer._getmany = getmany
    records, _ = await consumer._wait_next_records(0.1)
    assert records == {}
    assert consumer._thread.aiokafka.sought == []


# -- offsets without a record -------------------------------------------------------------


def spans_of(*fetches: tuple[int, int, list[int]], assignment: object = None) -> fetch.Spans:
    spans = fetch.Spans()
    for start, end, offsets in fetches:
        spans.record(IN, assignment, start, end, offsets)
    return spans


def test_contiguous_records_leave_no_empty_offsets() -> None:
    spans = spans_of((0, 3, [0, 1, 2]), (3, 5, [3, 4]))
    assert spans.empty(IN) == []
    assert spans.first_fetched(IN) == 0


def test_markers_and_compacted_offsets_at_the_head_middle_and_tail() -> None:
    # 10: compacted; 13: a transaction marker; 16-17: marker and aborted/compacted
    spans = spans_of((10, 18, [11, 12, 14, 15]))
    assert spans.empty(IN) == [(10, 11), (13, 14), (16, 18)]


def test_a_fetch_of_markers_only_is_recorded_and_ranges_merge() -> None:
    spans = spans_of((0, 3, [0, 1]), (3, 4, []))
    assert spans.empty(IN) == [(2, 4)]
    spans.forget_below(IN, 3)
    assert spans.empty(IN) == [(3, 4)]
    spans.forget_below(IN, 4)
    assert spans.empty(IN) == []


def test_first_fetched_starts_again_with_each_assignment() -> None:
    first, second = Assignment(), Assignment()
    spans = fetch.Spans()
    spans.record(IN, first, 40, 42, [40, 41])
    spans.record(IN, first, 20, 21, [20])  # a repair sought back
    assert spans.first_fetched(IN) == 20
    spans.record(IN, second, 42, 43, [42])
    assert spans.first_fetched(IN) == 42
    assert spans.first_fetched(TP("other", 0)) is None


def test_only_tracked_topics_are_recorded() -> None:
    spans = fetch.Spans()
    spans.track([IN.topic])
    spans.record(CHANGELOG, None, 0, 10, [3])  # a compacted changelog in recovery
    spans.record(IN, None, 0, 10, [3])
    assert spans.empty(CHANGELOG) == []
    assert spans.first_fetched(CHANGELOG) is None
    assert spans.empty(IN) == [(0, 3), (4, 10)]


def test_ranges_stay_sorted_and_merged_when_fetched_again_from_further_back() -> None:
    spans = spans_of((10, 20, [12, 19]), (20, 25, [24]), (0, 10, [0, 9]))
    assert spans.empty(IN) == [(1, 9), (10, 12), (13, 19), (20, 24)]
