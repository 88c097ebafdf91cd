"""Segment membership of one profile and its transitions (CONTRACT section 2).

Pure functions over an immutable snapshot: the caller stores
``Transition.memberships`` back into its table when ``Transition.changed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias

from worker.vocabulary import QualificationOutcome as Outcome
from worker.vocabulary import Status

__all__ = [
    "Memberships",
    "SegmentState",
    "Transition",
    "apply_qualification",
    "memberships_from_json",
    "memberships_to_json",
]


@dataclass(frozen=True, slots=True)
class SegmentState:
    member: bool
    last_qualification_time: datetime  # aware


Memberships: TypeAlias = Mapping[str, SegmentState]
"""Segment id -> state: the stored membership of one profile."""


@dataclass(frozen=True, slots=True)
class Transition:
    outcome: Outcome
    memberships: dict[str, SegmentState]  # the state to store (a new dict)
    exported_status: Status | None  # realized or exited
    changed: bool  # whether memberships differs from the input and must be written


def apply_qualification(
    memberships: Memberships,
    segment_id: str,
    status: Status,
    qualification_time: datetime,
) -> Transition:
    """Apply one qualification event (of any segment, mapped or not) to a profile's memberships."""
    previous = memberships.get(segment_id)
    if previous is not None and qualification_time < previous.last_qualification_time:
        # Strictly older only: an equal time is a legitimate re-evaluation.
        return Transition(Outcome.STALE, dict(memberships), None, False)

    was_member = previous is not None and previous.member
    is_member = status != Status.EXITED
    exported: Status | None
    if is_member and not was_member:
        outcome, exported = Outcome.EXPORTED, Status.REALIZED
    elif was_member and not is_member:
        outcome, exported = Outcome.EXPORTED, Status.EXITED
    elif is_member:
        outcome, exported = Outcome.DUPLICATE, None
    else:
        # Still stored, so that an older ``realized`` arriving later is seen
        # as stale instead of resurrecting the membership.
        outcome, exported = Outcome.NOT_MEMBER, None

    state = SegmentState(is_member, qualification_time)
    new = dict(memberships)
    new[segment_id] = state
    return Transition(outcome, new, exported, state != previous)


# Table values are JSON: {segment id: [member, epoch microseconds]}. Integer
# microseconds round-trip exactly (datetime's own resolution) and are compact.
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def memberships_to_json(memberships: Memberships) -> dict[str, Any]:
    return {
        segment_id: [state.member, (state.last_qualification_time - _EPOCH) // _MICROSECOND]
        for segment_id, state in memberships.items()
    }


def memberships_from_json(obj: Any) -> dict[str, SegmentState]:
    """Inverse of ``memberships_to_json``; raises ``ValueError`` on a malformed value."""
    if not isinstance(obj, dict):
        raise ValueError("stored memberships must be a JSON object")
    result: dict[str, SegmentState] = {}
    for segment_id, value in obj.items():
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], bool)
            or not isinstance(value[1], int)
            or isinstance(value[1], bool)
        ):
            raise ValueError(f"stored membership of segment {segment_id!r} is malformed: {value!r}")
        try:
            time = _EPOCH + value[1] * _MICROSECOND
        except OverflowError:
            raise ValueError(
                f"stored membership time of segment {segment_id!r} is out of range"
            ) from None
        result[segment_id] = SegmentState(value[0], time)
    return result
