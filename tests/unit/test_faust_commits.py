"""worker.faust.commits: never commit past an unacknowledged record, always over empty offsets."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from worker import faust as fixes
from worker.faust import commits, fetch

IN = TP("commits-test", 0)


class Offsets:
    """The attributes of faust.transport.consumer.Consumer that _new_offset reads."""

    def __init__(self, committed: int | None, acked: list[int]) -> None:
        self._committed_offset: dict[TP, int | None] = {IN: committed}
        self._acked: dict[TP, list[int]] = defaultdict(list)
        self._acked[IN] = list(acked)
        self._acked_index: dict[TP, set[int]] = defaultdict(set)
        self._acked_index[IN] = set(acked)
        self._gap: dict[TP, Any] = {}


class Assignment:
    """Stands for aiokafka's Assignment (weakly referenced)."""


def test_faust_alone_commits_past_one_unacknowledged_offset() -> None:
    # committed = 10 is the next offset to read; 10 was never acknowledged.
    original: Any = commits.original_new_offset
    offsets = Offsets(committed=10, acked=[11, 12])
    offsets._gap = defaultdict(list)
    assert original(offsets, IN) == 13  # offset 10 lost (faust-streaming#606)


def test_waits_for_the_missing_offset() -> None:
    assert commits.next_commit(10, [11, 12], []) == (None, 0)
    assert commits.next_commit(10, [10, 11, 12, 14], []) == (13, 3)


def test_commits_over_offsets_that_hold_no_record() -> None:
    # A transaction marker at the committed offset (a restart after a commit).
    assert commits.next_commit(10, [11, 12], [(10, 11)]) == (13, 2)
    # A marker at the tail: the commit reaches the end offset.
    assert commits.next_commit(10, [10, 11, 12], [(13, 14)]) == (14, 3)
    # Compacted-away offsets in the middle; nothing acked past the range.
    assert commits.next_commit(0, [0, 5], [(1, 5), (8, 9)]) == (6, 2)
    # Acks below the committed offset (replayed duplicates) are covered, not committed.
    assert commits.next_commit(10, [7, 8, 10], []) == (11, 3)
    assert commits.next_commit(10, [7, 8], []) == (None, 2)


def test_nothing_committed_starts_where_fetching_began() -> None:
    assert commits.next_commit(None, [0, 1], []) == (None, 0)
    # Offset 0 was fetched and dropped before it reached the agent: wait for it.
    assert commits.next_commit(0, [1, 2, 3], []) == (None, 0)
    assert commits.first_unacknowledged(0, [1, 2, 3], []) == 0


def test_first_unacknowledged_only_when_later_offsets_were_acknowledged() -> None:
    assert commits.first_unacknowledged(10, [10, 11], []) is None  # in order, all done
    assert commits.first_unacknowledged(10, [10, 11, 13], []) == 12
    assert commits.first_unacknowledged(10, [10, 11, 13], [(12, 13)]) is None
    assert commits.first_unacknowledged(None, [1], []) is None


@given(
    log=st.lists(st.sampled_from(["record", "empty"]), min_size=1, max_size=40),
    acked_share=st.lists(st.booleans(), min_size=40, max_size=40),
    start=st.integers(min_value=0, max_value=39),
)
def test_the_rule_against_a_model(log: list[str], acked_share: list[bool], start: int) -> None:
    """The commit is the first offset from ``start`` on that is a record not acknowledged."""
    start = min(start, len(log) - 1)
    acked = [o for o, kind in enumerate(log) if kind == "record" and acked_share[o]]
    empty = fetch._merge([(o, o + 1) for o, kind in enumerate(log) if kind == "empty"])
    expected = start
    while expected < len(log) and (log[expected] == "empty" or expected in acked):
        expected += 1
    commit, covered = commits.next_commit(start, acked, empty)
    assert commit == (expected if expected > start else None)
    assert all(o < expected for o in acked[:covered])
    assert all(o >= expected for o in acked[covered:])


def test_faust_uses_the_rule_and_forgets_what_it_committed() -> None:
    fixes.apply()
    fetch.SPANS.record(IN, None, 10, 14, [11, 12])  # 10 compacted, 13 a marker
    offsets = Offsets(committed=10, acked=[12, 11, 11])
    assert commits._new_offset(offsets, IN) == 14
    assert offsets._acked[IN] == []
    assert offsets._acked_index[IN] == set()
    assert fetch.SPANS.empty(IN) == []
    offsets._committed_offset[IN] = 14  # as Faust records a commit that succeeded
    offsets._acked[IN] = [16]
    assert commits._new_offset(offsets, IN) is None  # 14 and 15 not acknowledged
    assert commits.skipped_offset(offsets, IN) == 14


def test_a_marker_fetched_after_the_last_record_still_moves_the_commit() -> None:
    """A live transactional producer: records 20-24 are fetched, handled and
    committed before its commit marker (25) exists; no ack follows the marker."""
    fixes.apply()
    tp = TP("commits-marker", 0)
    offsets = Offsets(committed=25, acked=[])
    offsets._committed_offset = {tp: 25}
    offsets._acked[tp] = []
    fetch.SPANS.record(tp, None, 25, 26, [])
    assert commits._new_offset(offsets, tp) == 26


def test_a_committed_offset_the_log_no_longer_holds_starts_where_fetching_did() -> None:
    """Retention deleted offsets 0-99 while nothing committed past 40: aiokafka
    resets to 100; commits must not wait for offsets 40-99 forever."""
    tp = TP("commits-retention", 0)
    assignment = Assignment()
    fetch.SPANS.record(tp, assignment, 100, 103, [100, 101, 102])
    offsets = Offsets(committed=40, acked=[])
    offsets._committed_offset = {tp: 40}
    offsets._acked[tp] = [100, 101, 102]
    assert commits.start_of(offsets, tp) == 100
    assert commits.skipped_offset(offsets, tp) is None
    assert commits._new_offset(offsets, tp) == 103


def test_apply_patches_faust_once() -> None:
    from faust.transport.consumer import Consumer

    fixes.apply()
    fixes.apply()
    assert Consumer._new_offset is commits._new_offset


def test_other_versions_are_refused() -> None:
    fixes.check_versions("0.15.3", "0.14.0")
    for faust_version, aiokafka_version in (("0.15.4", "0.14.0"), ("0.15.3", "0.15.0")):
        with pytest.raises(RuntimeError, match="before upgrading"):
            fixes.check_versions(faust_version, aiokafka_version)
