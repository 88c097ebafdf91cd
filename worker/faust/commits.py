"""Which offset Faust may commit: never past a record that was not acknowledged.

faust-streaming 0.15.3's ``Consumer._new_offset`` treats the committed offset
as the last offset processed, while Kafka's committed offset is the next one
to read. It therefore commits past one missing offset at the head of a
partition (faust-streaming#606, fix PR #707 unmerged): an event fetched around
a rebalance that never reached the agent was committed unprocessed.
Its gap bookkeeping (``Consumer._gap``, fed from the read offsets) has the
same off-by-one, and it does not know offsets Kafka never delivers at the
head or the tail of a fetch: transaction markers and records removed by
compaction. A guard that only "waits for the missing offset" then holds a
partition's commits forever on a transactional or compacted input topic.

Here the rule is exact, from what the fetcher actually saw (``fetch.py``
records which offsets of each fetch held no record): starting from the
committed offset, the commit moves over every offset that is acknowledged or
known to hold no record, and stops at the first one that is neither.

Proved by tests/unit/test_faust_commits.py (the rule) and
tests/integration/test_offsets.py (transactional and compacted inputs commit
to their end offsets).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

from faust.transport import consumer as faust_consumer

from worker.faust import fetch

original_new_offset = faust_consumer.Consumer._new_offset


def next_commit(
    start: int | None, acked: list[int], empty: Iterable[tuple[int, int]]
) -> tuple[int | None, int]:
    """(offset to commit or None, index of the first ack not covered).

    ``start`` is the next offset to read as last committed, or where fetching
    began when nothing was committed; ``acked`` is sorted; ``empty`` holds
    sorted, non-overlapping [begin, end) ranges of offsets without a record.
    """
    if start is None:
        return None, 0
    cursor = start
    i = 0
    ranges = list(empty)
    j = 0
    while True:
        while j < len(ranges) and ranges[j][1] <= cursor:
            j += 1
        if j < len(ranges) and ranges[j][0] <= cursor:
            cursor = ranges[j][1]  # offsets without a record
            continue
        i = bisect.bisect_left(acked, cursor, i)
        if i < len(acked) and acked[i] == cursor:
            # A run of consecutive acknowledged offsets.
            while i + 1 < len(acked) and acked[i + 1] == acked[i] + 1:
                i += 1
            cursor = acked[i] + 1
            i += 1
            continue
        break
    return (cursor if cursor > start else None), i


def first_unacknowledged(
    start: int | None, acked: list[int], empty: Iterable[tuple[int, int]]
) -> int | None:
    """The offset a commit waits for while later offsets are acknowledged: a
    record that never reached the agent (batches are acknowledged in offset
    order within a partition). None when nothing waits that way."""
    if start is None or not acked:
        return None
    commit, _ = next_commit(start, acked, empty)
    cursor = commit if commit is not None else start
    return cursor if acked[-1] > cursor else None


def start_of(consumer: Any, tp: Any) -> int | None:
    """Where this partition's commits start: the committed offset, else the
    first offset fetched since the partition was assigned.

    Fetching starts at the committed offset, unless the log no longer holds it
    (retention): aiokafka then resets to the earliest offset, and the offsets
    in between are gone, so commits start where fetching did.
    """
    committed: int | None = consumer._committed_offset.get(tp)
    first = fetch.SPANS.first_fetched(tp)
    if committed is None:
        return first
    return first if first is not None and first > committed else committed


def skipped_offset(consumer: Any, tp: Any) -> int | None:
    """The offset of ``tp`` that holds its commits back while later offsets
    were acknowledged; None if there is none."""
    acked = consumer._acked.get(tp)
    if not acked:
        return None
    return first_unacknowledged(start_of(consumer, tp), sorted(set(acked)), fetch.SPANS.empty(tp))


def _new_offset(self: Any, tp: Any) -> int | None:
    """Replaces ``faust.transport.consumer.Consumer._new_offset`` (0.15.3)."""
    # Also without new acks: a transaction marker fetched after the last
    # record of a partition still moves its commit to the end.
    acked = self._acked[tp]
    acked[:] = sorted(set(acked))
    self._gap.pop(tp, None)  # superseded by fetch.SPANS
    start = start_of(self, tp)
    commit, covered = next_commit(start, acked, fetch.SPANS.empty(tp))
    if covered:
        self._acked_index[tp].difference_update(acked[:covered])
        acked[:covered] = []
    if commit is not None:
        fetch.SPANS.forget_below(tp, commit)
    return commit
