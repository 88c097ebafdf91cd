"""Membership transitions (CONTRACT section 2) and their stored form."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.membership import (
    Memberships,
    SegmentState,
    Transition,
    apply_qualification,
    memberships_from_json,
    memberships_to_json,
)
from worker.vocabulary import QualificationOutcome as Outcome
from worker.vocabulary import Status

SEG = "59bd2fkd-3c48-4b18-bf56-4f5c5e6967ae"
OTHER = "7841ba61-23c1-4bb3-a495-00d3g5fe1e93"
T0 = datetime(2020, 5, 25, 21, 24, 39, tzinfo=UTC)
EARLIER = T0 - timedelta(seconds=1)
LATER = T0 + timedelta(seconds=1)

MEMBER = {SEG: SegmentState(True, T0)}
NOT_MEMBER = {SEG: SegmentState(False, T0)}
NEVER_SEEN: dict[str, SegmentState] = {}


# Every row of the CONTRACT section 2 table, from a stored state at T0 (or none)
# and an event at LATER.
@pytest.mark.parametrize(
    ("stored", "status", "outcome", "exported", "member_after"),
    [
        (NEVER_SEEN, "realized", Outcome.EXPORTED, "realized", True),
        (NEVER_SEEN, "existing", Outcome.EXPORTED, "realized", True),
        (NOT_MEMBER, "realized", Outcome.EXPORTED, "realized", True),
        (NOT_MEMBER, "existing", Outcome.EXPORTED, "realized", True),
        (MEMBER, "exited", Outcome.EXPORTED, "exited", False),
        (MEMBER, "realized", Outcome.DUPLICATE, None, True),
        (MEMBER, "existing", Outcome.DUPLICATE, None, True),
        (NEVER_SEEN, "exited", Outcome.NOT_MEMBER, None, False),
        (NOT_MEMBER, "exited", Outcome.NOT_MEMBER, None, False),
    ],
)
def test_contract_table(
    stored: dict[str, SegmentState],
    status: Status,
    outcome: Outcome,
    exported: str | None,
    member_after: bool,
) -> None:
    before = dict(stored)
    t = apply_qualification(stored, SEG, Status(status), LATER)
    assert t.outcome is outcome
    assert t.exported_status == exported
    # Every applied event sets the time, exported or not.
    assert t.memberships == {SEG: SegmentState(member_after, LATER)}
    assert t.changed
    assert stored == before  # the input is never mutated
    assert t.memberships is not stored


@pytest.mark.parametrize("stored", [MEMBER, NOT_MEMBER])
@pytest.mark.parametrize("status", ["realized", "existing", "exited"])
def test_older_event_is_stale(stored: dict[str, SegmentState], status: Status) -> None:
    t = apply_qualification(stored, SEG, Status(status), EARLIER)
    assert t == Transition(Outcome.STALE, stored, None, False)


@pytest.mark.parametrize(
    ("stored", "status", "outcome", "exported"),
    [
        (MEMBER, "realized", Outcome.DUPLICATE, None),
        (MEMBER, "existing", Outcome.DUPLICATE, None),
        (MEMBER, "exited", Outcome.EXPORTED, "exited"),
        (NOT_MEMBER, "realized", Outcome.EXPORTED, "realized"),
        (NOT_MEMBER, "exited", Outcome.NOT_MEMBER, None),
    ],
)
def test_equal_time_is_not_stale(
    stored: dict[str, SegmentState], status: Status, outcome: Outcome, exported: str | None
) -> None:
    t = apply_qualification(stored, SEG, Status(status), T0)
    assert (t.outcome, t.exported_status) == (outcome, exported)


@pytest.mark.parametrize(("stored", "status"), [(MEMBER, "existing"), (NOT_MEMBER, "exited")])
def test_applied_event_that_changes_nothing_needs_no_write(
    stored: dict[str, SegmentState], status: Status
) -> None:
    t = apply_qualification(stored, SEG, Status(status), T0)
    assert t.memberships == stored
    assert not t.changed


def test_same_instant_in_another_zone_is_equal_time() -> None:
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    t = apply_qualification(MEMBER, SEG, Status("existing"), plus_two)
    assert t.outcome is Outcome.DUPLICATE
    assert not t.changed


def test_other_segments_are_untouched() -> None:
    stored = {OTHER: SegmentState(True, EARLIER), SEG: SegmentState(True, T0)}
    t = apply_qualification(stored, SEG, Status("exited"), LATER)
    assert t.memberships == {OTHER: SegmentState(True, EARLIER), SEG: SegmentState(False, LATER)}
    assert list(t.memberships) == [OTHER, SEG]


def _run(
    events: Sequence[tuple[str, Status, datetime]], start: Memberships = NEVER_SEEN
) -> tuple[dict[str, SegmentState], list[tuple[str, Outcome, str | None]]]:
    state = dict(start)
    log: list[tuple[str, Outcome, str | None]] = []
    for segment, status, time in events:
        if segment == "unmapped":  # the caller's rule: never applied, no trace
            log.append((segment, Outcome.UNMAPPED, None))
            continue
        t = apply_qualification(state, segment, Status(status), time)
        state = t.memberships
        log.append((segment, t.outcome, t.exported_status))
    return state, log


def members(state: Memberships) -> list[str]:
    return [segment for segment, s in state.items() if s.member]


def _at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


@pytest.mark.parametrize(
    ("events", "expected_log", "expected_members"),
    [
        # qualify, re-evaluate, exit, re-qualify
        (
            [("s", "realized", 0), ("s", "existing", 1), ("s", "exited", 2), ("s", "existing", 3)],
            [
                (Outcome.EXPORTED, "realized"),
                (Outcome.DUPLICATE, None),
                (Outcome.EXPORTED, "exited"),
                (Outcome.EXPORTED, "realized"),
            ],
            ["s"],
        ),
        # an exit overtaken by an older realized (out of order): the realized is stale
        (
            [("s", "exited", 5), ("s", "realized", 1)],
            [(Outcome.NOT_MEMBER, None), (Outcome.STALE, None)],
            [],
        ),
        # a late exit for an older qualification changes nothing
        (
            [("s", "realized", 5), ("s", "exited", 4), ("s", "existing", 6)],
            [(Outcome.EXPORTED, "realized"), (Outcome.STALE, None), (Outcome.DUPLICATE, None)],
            ["s"],
        ),
        # a duplicate still advances the time, so an exit between is stale
        (
            [("s", "realized", 1), ("s", "existing", 9), ("s", "exited", 5)],
            [(Outcome.EXPORTED, "realized"), (Outcome.DUPLICATE, None), (Outcome.STALE, None)],
            ["s"],
        ),
        # segments are independent
        (
            [("s", "realized", 5), ("t", "realized", 1), ("s", "exited", 6), ("t", "exited", 0)],
            [
                (Outcome.EXPORTED, "realized"),
                (Outcome.EXPORTED, "realized"),
                (Outcome.EXPORTED, "exited"),
                (Outcome.STALE, None),
            ],
            ["t"],
        ),
        # unmapped segments leave no trace
        (
            [("unmapped", "realized", 1), ("unmapped", "exited", 2)],
            [(Outcome.UNMAPPED, None), (Outcome.UNMAPPED, None)],
            [],
        ),
    ],
)
def test_sequences(
    events: list[tuple[str, Status, int]],
    expected_log: list[tuple[Outcome, str | None]],
    expected_members: list[str],
) -> None:
    state, log = _run([(s, st_, _at(m)) for s, st_, m in events])
    assert [(o, e) for _, o, e in log] == expected_log
    assert members(state) == expected_members
    assert "unmapped" not in state


def test_outcome_values() -> None:
    assert [o.value for o in Outcome] == [
        "exported",
        "duplicate",
        "stale",
        "unmapped",
        "not_member",
        "dead_lettered",
    ]
    assert f"{Outcome.STALE}" == "stale"


# --- stored form -----------------------------------------------------------------


def test_json_form() -> None:
    stored = {SEG: SegmentState(True, datetime(2020, 5, 25, 23, 37, 33, 123456, tzinfo=UTC))}
    assert memberships_to_json(stored) == {SEG: [True, 1590449853123456]}
    assert memberships_from_json({SEG: [True, 1590449853123456]}) == stored


def test_json_keeps_utc_and_microseconds() -> None:
    t = datetime(2020, 5, 26, 1, 37, 33, 1, tzinfo=timezone(timedelta(hours=2)))
    [(_, state)] = memberships_from_json(memberships_to_json({SEG: SegmentState(False, t)})).items()
    assert state == SegmentState(False, t)
    assert state.last_qualification_time.tzinfo is UTC
    assert state.last_qualification_time.microsecond == 1


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        {SEG: None},
        {SEG: [True]},
        {SEG: [True, 1, 2]},
        {SEG: [1, 1590449853123456]},
        {SEG: [True, "2020-05-25T23:37:33Z"]},
        {SEG: [True, 1.5]},
        {SEG: [True, False]},
        {SEG: {"member": True}},
        {SEG: [True, 10**20]},
    ],
)
def test_malformed_json_is_refused(obj: Any) -> None:
    with pytest.raises(ValueError, match=r"memberships|membership"):
        memberships_from_json(obj)


# --- properties -------------------------------------------------------------------

_segments = st.sampled_from(["s1", "s2", "s3", "unmapped"])
_statuses: st.SearchStrategy[Status] = st.sampled_from(list(Status))
_minutes = st.integers(min_value=0, max_value=30)
_events = st.lists(st.tuples(_segments, _statuses, _minutes), max_size=40)
# Distinct times per segment: with two conflicting events at one instant the
# order of arrival decides, so replaying them could legitimately export again.
_distinct_events = st.lists(
    st.tuples(_segments, _statuses, _minutes), max_size=40, unique_by=lambda e: (e[0], e[2])
)
_times = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)


def _timed(events: list[tuple[str, Status, int]]) -> list[tuple[str, Status, datetime]]:
    return [(s, status, _at(m)) for s, status, m in events]


@given(_events)
def test_exports_alternate_starting_with_realized(events: list[tuple[str, Status, int]]) -> None:
    _, log = _run(_timed(events))
    for segment in ("s1", "s2", "s3"):
        exported = [e for s, o, e in log if s == segment and o is Outcome.EXPORTED]
        assert exported == ["realized", "exited"] * (len(exported) // 2) + ["realized"] * (
            len(exported) % 2
        )
    assert all(o is Outcome.UNMAPPED for s, o, _ in log if s == "unmapped")


@given(_events)
def test_outcome_and_export_agree(events: list[tuple[str, Status, int]]) -> None:
    state: dict[str, SegmentState] = {}
    for segment, status, time in _timed(events):
        if segment == "unmapped":
            continue
        t = apply_qualification(state, segment, status, time)
        assert (t.exported_status is not None) == (t.outcome is Outcome.EXPORTED)
        assert t.changed == (t.memberships != state)
        if t.outcome in (Outcome.STALE, Outcome.UNMAPPED):
            assert t.memberships == state
        state = t.memberships


@given(_distinct_events)
def test_replay_exports_nothing(events: list[tuple[str, Status, int]]) -> None:
    final, _ = _run(_timed(events))
    again, log = _run(_timed(events), start=final)
    assert again == final
    assert [o for _, o, _ in log if o is Outcome.EXPORTED] == []


@given(_distinct_events)
def test_latest_event_decides(events: list[tuple[str, Status, int]]) -> None:
    final, _ = _run(_timed(events))
    for segment in ("s1", "s2", "s3"):
        mine = [(m, status) for s, status, m in events if s == segment]
        if not mine:
            assert segment not in final
            continue
        minute, status = max(mine)
        assert final[segment] == SegmentState(status != "exited", _at(minute))


def test_replay_of_conflicting_events_at_one_instant_exports_again() -> None:
    events = _timed([("s1", Status.REALIZED, 0), ("s1", Status.EXITED, 0)])
    final, _ = _run(events)
    _, log = _run(events, start=final)
    assert [e for _, _, e in log] == ["realized", "exited"]


_ids = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@given(st.dictionaries(_ids, st.builds(SegmentState, st.booleans(), _times)))
def test_json_round_trip_is_exact(stored: dict[str, SegmentState]) -> None:
    encoded = orjson.dumps(memberships_to_json(stored))
    restored = memberships_from_json(orjson.loads(encoded))
    assert restored == stored
    assert list(restored) == list(stored)
    for segment, state in restored.items():
        assert state.last_qualification_time.tzinfo is UTC
        assert state.last_qualification_time.replace(tzinfo=None) == stored[
            segment
        ].last_qualification_time.replace(tzinfo=None)
