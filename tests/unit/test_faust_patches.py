"""The commit-offset fix of worker._faust_patches, on Faust's own bookkeeping."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

from intervaltree import IntervalTree  # type: ignore[import-untyped]

from worker import _faust_patches


class TP(NamedTuple):
    topic: str
    partition: int


TOPIC = TP("t", 0)


class Offsets:
    """The attributes of faust.transport.consumer.Consumer that _new_offset reads."""

    def __init__(self, committed: int | None, acked: list[int]) -> None:
        self._committed_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset[TOPIC] = committed
        self._acked: dict[TP, list[int]] = defaultdict(list)
        self._acked[TOPIC] = list(acked)
        self._acked_index: dict[TP, set[int]] = defaultdict(set)
        self._acked_index[TOPIC] = set(acked)
        self._gap: dict[TP, Any] = defaultdict(IntervalTree)


def test_faust_alone_commits_past_one_unacknowledged_offset() -> None:
    # committed = 10 is the next offset to read; 10 was never acknowledged.
    offsets = Offsets(committed=10, acked=[11, 12])
    original: Any = _faust_patches._original_new_offset
    assert original(offsets, TOPIC) == 13  # offset 10 lost


def test_the_patch_waits_for_the_missing_offset() -> None:
    offsets = Offsets(committed=10, acked=[11, 12])
    assert _faust_patches._new_offset(offsets, TOPIC) is None
    offsets._acked[TOPIC].insert(0, 10)
    assert _faust_patches._new_offset(offsets, TOPIC) == 13


def test_consecutive_acks_commit_as_before_and_duplicates_are_dropped() -> None:
    offsets = Offsets(committed=10, acked=[10, 11, 11, 12, 14])
    assert _faust_patches._new_offset(offsets, TOPIC) == 13
    assert offsets._acked[TOPIC] == [14]


def test_a_known_gap_still_lets_commits_through() -> None:
    # Offsets Kafka never delivers (transaction markers, compaction) are gaps.
    offsets = Offsets(committed=10, acked=[12, 13])
    offsets._gap[TOPIC].addi(10, 12)
    assert _faust_patches._new_offset(offsets, TOPIC) == 14


def test_nothing_committed_yet_commits_from_the_first_ack() -> None:
    offsets = Offsets(committed=None, acked=[0, 1, 2])
    assert _faust_patches._new_offset(offsets, TOPIC) == 3


def test_apply_patches_faust_once() -> None:
    from faust.transport.consumer import Consumer

    _faust_patches.apply()
    _faust_patches.apply()
    assert Consumer._new_offset is _faust_patches._new_offset
