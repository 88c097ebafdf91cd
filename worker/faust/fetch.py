"""What the consumer thread fetches: the partitions Faust asked for, and what it saw.

1. **The live active set** (not yet reported upstream; reproduction in
   docs/faust-fetch-race.md). faust-streaming 0.15.3's
   ``Consumer._wait_next_records`` hands its *live* ``_active_partitions`` set
   to the consumer thread. Table recovery empties that set while a fetch is in
   flight (changelogs paused, stream partitions not yet resumed); aiokafka's
   ``Fetcher.fetched_records`` reads an empty set as "every partition", returns
   the prefetched input records and moves its positions past them, and Faust
   then drops every record of a partition not in its (empty) set. A restarted
   worker received nothing (with no committed offset there is nothing to seek
   back to), or lost records for good once later ones were committed.
   The fix hands the thread a frozen copy and fetches nothing when it is
   empty. Records Faust's ``getmany`` would drop when they come back (the
   partition paused during the fetch, or the flow stopped: they must not reach
   the agent during a recovery) are taken out, and their partition is sought
   back to the first of them unless something sought it meanwhile. Without
   that, a changelog partition whose records came back while its recovery
   was being set up (sought to 0, flow not yet resumed) lost them for good,
   and the recovery waited forever for offsets aiokafka had moved past: the
   likely cause of a scaling-test failure (docs/benchmarks.md; "No event received
   for active tp"), found by review, not reproduced since. Input partitions
   were already put right by the recovery's final seek (``recovery.py``).
   Proved by tests/unit/test_faust_fetch.py and, end to end, by
   tests/integration/test_pipeline.py::test_killing_the_worker_loses_nothing.

2. **Offsets without a record.** aiokafka skips transaction markers, aborted
   batches and compacted-away records without telling anyone. ``SPANS``
   records, per fetch, which offsets between the position before and after it
   held no record, and where fetching began after each assignment, so that
   ``commits.py`` can commit over them and nothing else.
   Proved by tests/integration/test_offsets.py.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from aiokafka.consumer.fetcher import FetchResult
from faust.transport import consumer as faust_consumer

_Key = tuple[str, int]


class Spans:
    """Offsets known to hold no record, and the first offset fetched, per partition.

    Written by the consumer thread, read by Faust's event loop: every access
    holds the lock. What it says is a fact about the log (a marker is a marker
    for every reader), so it is keyed by topic and partition only.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._empty: dict[_Key, list[tuple[int, int]]] = {}
        # key -> (aiokafka assignment, first offset fetched in it)
        self._first: dict[_Key, tuple[weakref.ref[object] | None, int]] = {}
        # Only input topics: a compacted changelog read in recovery would
        # otherwise leave a range per removed record, never committed.
        self._topics: frozenset[str] | None = None

    def track(self, topics: Iterable[str]) -> None:
        """Records spans for these topics only (all topics until called)."""
        self._topics = frozenset(topics)

    def record(self, tp: Any, assignment: object, start: int, end: int, offsets: list[int]) -> None:
        """A fetch moved ``tp`` from ``start`` to ``end`` and returned ``offsets``."""
        if self._topics is not None and tp.topic not in self._topics:
            return
        key = (tp.topic, tp.partition)
        holes: list[tuple[int, int]] = []
        if not offsets:
            holes.append((start, end))
        else:
            if offsets[0] > start:
                holes.append((start, offsets[0]))
            if offsets[-1] - offsets[0] != len(offsets) - 1:
                for before, after in itertools.pairwise(offsets):
                    if after > before + 1:
                        holes.append((before + 1, after))
            if end > offsets[-1] + 1:
                holes.append((offsets[-1] + 1, end))
        with self._lock:
            first = self._first.get(key)
            if first is None or _deref(first[0]) is not assignment:
                self._first[key] = (_ref(assignment), start)
            elif start < first[1]:
                self._first[key] = (first[0], start)
            if holes:
                ranges = self._empty.setdefault(key, [])
                if ranges and holes[0][0] < ranges[-1][1]:
                    self._empty[key] = _merge(ranges + holes)  # fetched again from further back
                else:
                    for hole in holes:  # in offset order after what is known: append
                        if ranges and hole[0] == ranges[-1][1]:
                            ranges[-1] = (ranges[-1][0], hole[1])
                        else:
                            ranges.append(hole)

    def empty(self, tp: Any) -> list[tuple[int, int]]:
        with self._lock:
            return list(self._empty.get((tp.topic, tp.partition), ()))

    def first_fetched(self, tp: Any) -> int | None:
        with self._lock:
            first = self._first.get((tp.topic, tp.partition))
        return first[1] if first is not None else None

    def forget_below(self, tp: Any, offset: int) -> None:
        key = (tp.topic, tp.partition)
        with self._lock:
            ranges = self._empty.get(key)
            if ranges:
                kept = [(max(b, offset), e) for b, e in ranges if e > offset]
                if kept:
                    self._empty[key] = kept
                else:
                    del self._empty[key]


def _ref(assignment: object) -> weakref.ref[object] | None:
    return None if assignment is None else weakref.ref(assignment)


def _deref(ref: weakref.ref[object] | None) -> object:
    return None if ref is None else ref()


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for begin, end in sorted(ranges):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


SPANS = Spans()

_original_getall = FetchResult.getall


def _getall(self: Any, max_records: int | None = None) -> list[Any]:
    """Replaces aiokafka's ``FetchResult.getall`` (0.14): the same, and tells SPANS."""
    partition_records = self._partition_records
    if partition_records is None:
        return []
    start: int = partition_records.next_fetch_offset
    records: list[Any] = _original_getall(self, max_records)
    end: int = partition_records.next_fetch_offset
    if end > start:
        offsets = [r.offset for r in records]
        SPANS.record(self._topic_partition, self._assignment, start, end, offsets)
    return records


async def _wait_next_records(self: Any, timeout: float) -> tuple[Any, Any]:  # noqa: ASYNC109
    """Replaces ``faust.transport.consumer.Consumer._wait_next_records`` (0.15.3)."""
    if not self.flow_active:
        await self.wait(self.can_resume_flow)
    try:
        self.not_waiting_next_records.set()
        # Faust filters what comes back with the live set returned here (records
        # of a partition paused meanwhile are dropped; the seek at the end of the
        # recovery that paused it fetches them again); the thread gets a copy.
        active = None if self.app.client_only else self._get_active_partitions()
        fetch_for = None if active is None else frozenset(active)
        if fetch_for is not None and not fetch_for:
            # aiokafka would read an empty set as "every partition".
            await self.sleep(0.1)
            return {}, active
        records = await self._getmany(active_partitions=fetch_for, timeout=timeout)
        while records:
            # Faust's getmany drops what it will not deliver; aiokafka has moved
            # past it. Put those partitions back where the records began.
            dropped = {
                tp: (batch[0].offset, batch[-1].offset + 1)
                for tp, batch in records.items()
                if batch and not _deliverable(self, tp, active)
            }
            if not dropped:
                break
            await self._thread.call_thread(_seek_back, self._thread._ensure_consumer(), dropped)
            records = {tp: batch for tp, batch in records.items() if tp not in dropped}
        return records, active
    finally:
        self.not_waiting_next_records.set()


def _deliverable(consumer: Any, tp: Any, active: Any) -> bool:
    """Whether Faust's ``Consumer.getmany`` (0.15.3) yields ``tp``'s records now."""
    if not consumer.flow_active:
        return False
    return active is None or tp in active or tp in consumer._buffered_partitions


async def _seek_back(consumer: Any, spans: dict[Any, tuple[int, int]]) -> None:
    """In the consumer thread: each partition back to ``first`` if it is still
    where the dropped records left it (``end``); a partition sought meanwhile
    (a recovery, a rebalance) is left where it was put."""
    subscription = consumer._subscription.subscription
    assignment = subscription.assignment if subscription is not None else None
    if assignment is None:
        return
    for tp, (first, end) in spans.items():
        if tp not in assignment.tps:
            continue
        state = assignment.state_value(tp)
        if state.has_valid_position and state.position == end:
            consumer.seek(tp, first)


original_wait_next_records = faust_consumer.Consumer._wait_next_records


def apply() -> None:
    faust_consumer.Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign]
    FetchResult.getall = _getall
