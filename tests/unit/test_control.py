"""Commands on the control topic (worker.control): parsing and encoding of
``resend``, and following a job's progress in the activations changelog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.activation import Activation, Job, activation_key, activation_to_json
from worker.control import (
    MAX_COMMAND_BYTES,
    Action,
    Command,
    Progress,
    encode_command,
    encode_resend,
    follow_changelog,
    job_progress,
    new_job_id,
    parse_command,
)
from worker.events import BadEvent
from worker.vocabulary import DeadLetterReason as Reason
from worker.vocabulary import JobKind

DEST = "Dest One"
KEY = b"resend-key"
_ABSENT: Any = object()  # a field left out of the command


def _command(**fields: Any) -> bytes:
    body: dict[str, Any] = {"command": "resend", "id": "resend-1", "destination": DEST}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not _ABSENT})


def _bad(value: bytes | None, key: bytes | None = KEY) -> BadEvent:
    with pytest.raises(BadEvent) as info:
        parse_command(key, value)
    return info.value


# --- parse_command: valid commands -----------------------------------------------


def test_resend_of_every_segment() -> None:
    assert parse_command(KEY, _command()) == Command("resend-1", DEST, None)


def test_resend_with_null_segments_is_every_segment() -> None:
    assert parse_command(KEY, _command(segments=None)) == Command("resend-1", DEST, None)


def test_resend_of_some_segments() -> None:
    command = parse_command(KEY, _command(segments=["s1", "s2", "s1"]))
    assert command == Command("resend-1", DEST, frozenset({"s1", "s2"}))
    assert isinstance(command.segments, frozenset)


@pytest.mark.parametrize("key", [None, b"", b"anything", b"\xff"])
def test_the_key_is_not_read(key: bytes | None) -> None:
    assert parse_command(key, _command()) == Command("resend-1", DEST, None)


def test_unknown_fields_are_ignored() -> None:
    value = _command(requestedAt="2024-01-01T00:00:00+00:00", extra={"a": [1]})
    assert parse_command(KEY, value) == Command("resend-1", DEST, None)


def test_command_of_exactly_the_maximum_size_is_read() -> None:
    base = _command(pad="")
    value = _command(pad="x" * (MAX_COMMAND_BYTES - len(base)))
    assert len(value) == MAX_COMMAND_BYTES
    assert parse_command(KEY, value) == Command("resend-1", DEST, None)


def test_non_ascii_names() -> None:
    value = _command(id="ré-1", destination="Zielort ☃", segments=["sé"])
    assert parse_command(KEY, value) == Command("ré-1", "Zielort ☃", frozenset({"sé"}))


# --- parse_command: bad commands ---------------------------------------------------


@pytest.mark.parametrize("value", [None, b""], ids=["null", "empty"])
def test_missing_value(value: bytes | None) -> None:
    bad = _bad(value)
    assert bad.reason is Reason.MISSING_VALUE
    assert bad.detail == "a command needs a value"


def test_too_large() -> None:
    base = _command(pad="")
    value = _command(pad="x" * (MAX_COMMAND_BYTES - len(base) + 1))
    assert len(value) == MAX_COMMAND_BYTES + 1
    bad = _bad(value)
    assert bad.reason is Reason.INVALID_FIELD
    assert str(MAX_COMMAND_BYTES) in bad.detail


def test_too_large_is_refused_before_parsing() -> None:
    bad = _bad(b"\x00" * (MAX_COMMAND_BYTES + 1))
    assert bad.reason is Reason.INVALID_FIELD


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"{", id="truncated"),
        pytest.param(b"resend", id="bare-word"),
        pytest.param(b"{'command': 'resend'}", id="single-quotes"),
        pytest.param(b'{"command": "resend",}', id="trailing-comma"),
        pytest.param(b'"\xff"', id="invalid-utf8"),
        pytest.param(b"{} {}", id="two-values"),
        pytest.param(b"NaN", id="nan"),
    ],
)
def test_invalid_json(value: bytes) -> None:
    bad = _bad(value)
    assert bad.reason is Reason.INVALID_JSON
    assert bad.detail.startswith("not JSON")


@pytest.mark.parametrize(
    "value",
    [b"[]", b'["resend"]', b'"resend"', b"1", b"1.5", b"true", b"null"],
)
def test_not_an_object(value: bytes) -> None:
    bad = _bad(value)
    assert bad.reason is Reason.NOT_AN_OBJECT
    assert bad.detail == "a command is a JSON object"


@pytest.mark.parametrize("name", ["command", "id", "destination"])
@pytest.mark.parametrize("value", [_ABSENT, None], ids=["absent", "null"])
def test_missing_field(name: str, value: Any) -> None:
    bad = _bad(_command(**{name: value}))
    assert bad.reason is Reason.MISSING_FIELD
    assert bad.detail == f"{name!r} is required"


@pytest.mark.parametrize("name", ["command", "id", "destination"])
@pytest.mark.parametrize(
    "value",
    ["", 1, 0, 1.5, True, False, [], ["resend"], {}, {"name": "x"}],
    ids=repr,
)
def test_invalid_field(name: str, value: Any) -> None:
    bad = _bad(_command(**{name: value}))
    assert bad.reason is Reason.INVALID_FIELD
    assert bad.detail == f"{name!r} must be a non-empty string"


def test_fields_are_checked_in_order() -> None:
    bad = _bad(orjson.dumps({"destination": 1}))
    assert (bad.reason, bad.detail) == (Reason.MISSING_FIELD, "'command' is required")
    bad = _bad(orjson.dumps({"command": "resend", "destination": 1}))
    assert (bad.reason, bad.detail) == (Reason.MISSING_FIELD, "'id' is required")
    bad = _bad(orjson.dumps({"command": "resend", "id": "r"}))
    assert (bad.reason, bad.detail) == (Reason.MISSING_FIELD, "'destination' is required")


def test_empty_object() -> None:
    bad = _bad(b"{}")
    assert (bad.reason, bad.detail) == (Reason.MISSING_FIELD, "'command' is required")


@pytest.mark.parametrize("command", ["RESEND", "Resend", " resend", "resend ", "replay", "stop"])
def test_unknown_command(command: str) -> None:
    bad = _bad(_command(command=command))
    assert bad.reason is Reason.INVALID_FIELD
    assert bad.detail == f"unknown command {command!r}"


@pytest.mark.parametrize(
    "segments",
    [
        pytest.param([], id="empty-list"),
        pytest.param("s1", id="string"),
        pytest.param("", id="empty-string"),
        pytest.param(1, id="number"),
        pytest.param(True, id="bool"),
        pytest.param({"s1": True}, id="object"),
        pytest.param([1], id="number-item"),
        pytest.param(["s1", 2], id="one-number-item"),
        pytest.param([None], id="null-item"),
        pytest.param([["s1"]], id="list-item"),
        pytest.param([{"id": "s1"}], id="object-item"),
        pytest.param([""], id="empty-string-item"),
        pytest.param(["s1", ""], id="one-empty-string-item"),
        pytest.param([True], id="bool-item"),
    ],
)
def test_bad_segments(segments: Any) -> None:
    bad = _bad(_command(segments=segments))
    assert bad.reason is Reason.INVALID_FIELD
    assert bad.detail == "'segments' must be a non-empty list of segment ids"


def test_bad_event_formats_reason_and_detail() -> None:
    bad = _bad(None)
    assert str(bad) == "missing_value: a command needs a value"
    assert bad.args == (Reason.MISSING_VALUE, "a command needs a value")


# --- encode_resend -------------------------------------------------------------------


def test_encode_resend_form() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    body = orjson.loads(encode_resend("resend-1", DEST, ["s1", "s2"]))
    after = datetime.now(UTC)
    assert set(body) == {"command", "id", "destination", "segments", "requestedAt"}
    assert body["command"] == Action.RESEND.value == "resend"
    assert body["id"] == "resend-1"
    assert body["destination"] == DEST
    assert body["segments"] == ["s1", "s2"]
    requested = datetime.fromisoformat(body["requestedAt"])
    assert requested.utcoffset() == timedelta(0)
    assert requested.microsecond == 0  # seconds only
    assert before <= requested <= after


def test_encode_resend_of_every_segment() -> None:
    value = encode_resend("resend-1", DEST, None)
    assert orjson.loads(value)["segments"] is None
    assert parse_command(None, value) == Command("resend-1", DEST, None)


def test_encode_resend_takes_any_sequence() -> None:
    value = encode_resend("resend-1", DEST, ("s2", "s1"))
    assert orjson.loads(value)["segments"] == ["s2", "s1"]
    assert parse_command(None, value) == Command("resend-1", DEST, frozenset({"s1", "s2"}))


def test_new_job_ids_are_distinct_resend_ids() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100
    for job_id in ids:
        assert job_id.startswith("resend-")
        assert len(job_id) == len("resend-") + 12
        int(job_id.removeprefix("resend-"), 16)
    assert parse_command(None, encode_resend(new_job_id(), DEST, None)).id.startswith("resend-")


_names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)


@given(_names, _names, st.none() | st.lists(_names, min_size=1, max_size=8))
def test_encode_resend_round_trips(
    job_id: str, destination: str, segments: list[str] | None
) -> None:
    command = parse_command(None, encode_resend(job_id, destination, segments))
    expected = None if segments is None else frozenset(segments)
    assert command == Command(job_id, destination, expected)


# --- follow_changelog -------------------------------------------------------------------


def _key(partition: int | str, destination: str = DEST) -> bytes:
    return orjson.dumps(f"{partition}/{destination}")


def _job(job_id: str, sent: int = 0, total: int | None = None) -> Job:
    return Job(job_id, JobKind.RESEND, frozenset({"s1"}), 1.0, sent=sent, total=total)


def _state(*done: tuple[str, int], jobs: tuple[Job, ...] = ()) -> Activation:
    return Activation(frozenset({"s1"}), 1.0, jobs=jobs, done=done)


def _value(state: Activation) -> bytes:
    return orjson.dumps(activation_to_json(state))


def _follow(
    messages: list[tuple[bytes | None, bytes | None]], destination: str = DEST
) -> dict[int, Activation]:
    states: dict[int, Activation] = {}
    for key, value in messages:
        follow_changelog(states, key, value, destination)
    return states


def test_key_form() -> None:
    assert _key(3) == b'"3/Dest One"'
    assert _key(3) == orjson.dumps(activation_key(3, DEST))


def test_changelog_keeps_the_destination_activation_per_partition() -> None:
    s0, s3 = _state(("r1", 2)), _state(jobs=(_job("r2", 1, 4),))
    states = _follow([(b'"3/Dest One"', _value(s3)), (_key(0), _value(s0))])
    assert states == {3: s3, 0: s0}
    assert all(isinstance(state, Activation) for state in states.values())


@pytest.mark.parametrize(
    "key",
    [
        b'"3/Dest Two"',
        b'"3/Dest On"',
        b'"3/Dest One "',
        b'"3/dest one"',
        b'"3/Dest One/x"',
        b'"3/"',  # the partition's "planned" marker
        b'"3"',
        b'"Dest One"',
    ],
)
def test_changelog_ignores_other_destinations(key: bytes) -> None:
    states = {3: _state(("r1", 1))}
    follow_changelog(states, key, _value(_state()), DEST)
    follow_changelog(states, key, None, DEST)
    assert states == {3: _state(("r1", 1))}


def test_the_planned_marker_is_not_an_activation() -> None:
    """The marker (destination "") holds no activation: following the empty
    destination name reads nothing from it."""
    states = _follow([(_key(3, ""), orjson.dumps({"since": 1.0}))], destination="")
    assert states == {}


def test_destination_names_may_hold_a_slash() -> None:
    s1, s2 = _state(("r1", 1)), _state(("r1", 2))
    states = _follow([(_key(1, "a/b"), _value(s1)), (_key(2, "b"), _value(s2))], destination="a/b")
    assert states == {1: s1}


def test_tombstone_removes_the_partition() -> None:
    states = _follow([(_key(1), _value(_state())), (_key(2), _value(_state())), (_key(1), None)])
    assert states == {2: _state()}


def test_tombstone_of_an_unknown_partition_is_ignored() -> None:
    assert _follow([(_key(1), None)]) == {}


def test_later_message_replaces_earlier() -> None:
    first, second = _state(jobs=(_job("r1", 1),)), _state(("r1", 5))
    states = _follow([(_key(1), _value(first)), (_key(1), _value(second))])
    assert states == {1: second}


def test_message_after_a_tombstone_comes_back() -> None:
    states = _follow(
        [(_key(1), _value(_state(("r0", 1)))), (_key(1), None), (_key(1), _value(_state()))]
    )
    assert states == {1: _state()}


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(None, id="no-key"),
        pytest.param(b"", id="empty"),
        pytest.param(b"3/Dest One", id="not-json"),
        pytest.param(b'"3/Dest One', id="truncated"),
        pytest.param(b'"\xff/Dest One"', id="invalid-utf8"),
        pytest.param(b"3", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b'["3/Dest One"]', id="list"),
        pytest.param(b'{"3": "Dest One"}', id="object"),
        pytest.param(b'"x/Dest One"', id="partition-not-a-number"),
        pytest.param(b'"/Dest One"', id="partition-empty"),
        pytest.param(b'"1.5/Dest One"', id="partition-fraction"),
        pytest.param(orjson.dumps("9" * 5000 + "/Dest One"), id="partition-too-long"),
    ],
)
def test_malformed_key_is_ignored(key: bytes | None) -> None:
    states = {3: _state(("r1", 1))}
    follow_changelog(states, key, _value(_state()), DEST)
    follow_changelog(states, key, None, DEST)
    assert states == {3: _state(("r1", 1))}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"\xff", id="invalid-utf8"),
        pytest.param(b"done", id="bare-word"),
        pytest.param(b"null", id="null"),
        pytest.param(b"[]", id="list"),
        pytest.param(b'"r1"', id="string"),
        pytest.param(b"7", id="number"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b'{"since": 1.0}', id="planned-marker"),
        pytest.param(b'{"active": ["s1"], "since": "now"}', id="since-text"),
        pytest.param(
            b'{"active": [], "since": 1, "jobs": [{"id": "r1", "kind": "replay"}]}',
            id="job-malformed",
        ),
    ],
)
def test_malformed_value_is_skipped(value: bytes) -> None:
    """A value that is not an activation leaves what was read of the partition
    as it was, and adds no partition."""
    states = {3: _state(("r1", 1))}
    follow_changelog(states, _key(3), value, DEST)
    follow_changelog(states, _key(4), value, DEST)
    assert states == {3: _state(("r1", 1))}
    assert job_progress(states, "r1") == Progress(1, 0, 1, 1)


# --- job_progress ------------------------------------------------------------------------


def test_no_partition_no_progress() -> None:
    progress = job_progress({}, "r1")
    assert progress == Progress(done=0, pending=0, sent=0, total=0)
    assert progress.taken == 0


def test_unknown_job_has_no_progress() -> None:
    states = {
        0: _state(("other", 4), jobs=(_job("other2", 3, 9),)),
        1: _state(),
        2: Activation(frozenset(), 1.0),
    }
    assert job_progress(states, "r1") == Progress(0, 0, 0, 0)


def test_done_partitions_count_their_sent_in_sent_and_total() -> None:
    states = {0: _state(("r0", 100), ("r1", 5)), 1: _state(("r1", 7)), 2: _state(("r1", 0))}
    progress = job_progress(states, "r1")
    assert progress == Progress(done=3, pending=0, sent=12, total=12)
    assert progress.taken == 3


def test_pending_jobs_add_sent_and_total() -> None:
    states = {
        0: _state(jobs=(_job("r0", 50, 50), _job("r1", 2, 8))),
        1: _state(jobs=(_job("r1", 3, 4),)),
    }
    progress = job_progress(states, "r1")
    assert progress == Progress(done=0, pending=2, sent=5, total=12)
    assert progress.taken == 2


def test_pending_job_not_yet_listed_counts_what_it_sent_as_its_total() -> None:
    states = {
        0: _state(jobs=(_job("r1", 2, None),)),
        1: _state(jobs=(_job("r1", 0, None),)),
    }
    assert job_progress(states, "r1") == Progress(done=0, pending=2, sent=2, total=2)


def test_done_and_pending_partitions_add_up() -> None:
    states = {
        0: _state(("r1", 10)),
        1: _state(jobs=(_job("r1", 4, 6),)),
        2: _state(("other", 99)),
        3: _state(),
    }
    progress = job_progress(states, "r1")
    assert progress == Progress(done=1, pending=1, sent=14, total=16)
    assert progress.taken == 2


def test_done_wins_over_a_pending_job_of_the_same_id() -> None:
    states = {0: _state(("r1", 10), jobs=(_job("r1", 4, 6),))}
    assert job_progress(states, "r1") == Progress(done=1, pending=0, sent=10, total=10)


def test_a_job_pending_twice_in_a_partition_counts_twice() -> None:
    """Not something plan() or request() make; job_progress counts what it reads."""
    states = {0: _state(jobs=(_job("r1", 1, 2), _job("r1", 3, 4)))}
    assert job_progress(states, "r1") == Progress(done=0, pending=2, sent=4, total=6)


def test_progress_from_the_changelog() -> None:
    pending = Activation(
        frozenset({"s1"}),
        1.0,
        jobs=(Job("r1", JobKind.RESEND, frozenset({"s1"}), 1.0, cursor="p", sent=3, total=5),),
    )
    finished = pending.finish(Job("r1", JobKind.RESEND, frozenset({"s1"}), 1.0, sent=5))
    other = Activation(frozenset({"s1"}), 1.0, done=(("r1", 100),))
    messages: list[tuple[bytes | None, bytes | None]] = [
        (_key(0), _value(pending)),
        (_key(1), _value(pending)),
        (_key(0, "Other"), _value(other)),
        (_key(2, ""), orjson.dumps({"since": 1.0})),  # a partition's "planned" marker
    ]
    states = _follow(messages)
    assert job_progress(states, "r1") == Progress(done=0, pending=2, sent=6, total=10)
    follow_changelog(states, _key(0), _value(finished), DEST)
    assert job_progress(states, "r1") == Progress(done=1, pending=1, sent=8, total=10)
    follow_changelog(states, _key(1), _value(finished), DEST)
    progress = job_progress(states, "r1")
    assert progress == Progress(done=2, pending=0, sent=10, total=10)
    assert progress.taken == 2


# --- pause and resume -----------------------------------------------------------------


def test_actions() -> None:
    assert [a.value for a in Action] == ["resend", "pause", "resume"]


@pytest.mark.parametrize("action", [Action.PAUSE, Action.RESUME])
def test_pause_and_resume_parse(action: Action) -> None:
    value = orjson.dumps({"command": action.value, "id": "p-1", "destination": DEST})
    command = parse_command(KEY, value)
    assert command == Command("p-1", DEST, None, action)
    assert command.action is action


def test_a_resend_is_the_default_action() -> None:
    assert parse_command(KEY, _command()).action is Action.RESEND
    assert Command("resend-1", DEST, None) == Command("resend-1", DEST, None, Action.RESEND)


@pytest.mark.parametrize("command", ["PAUSE", "Pause", "pause ", "suspend", "unpause"])
def test_unknown_pause_like_commands(command: str) -> None:
    bad = _bad(_command(command=command))
    assert (bad.reason, bad.detail) == (Reason.INVALID_FIELD, f"unknown command {command!r}")


@pytest.mark.parametrize("action", [Action.PAUSE, Action.RESUME])
def test_encode_command_of_pause_and_resume(action: Action) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    body = orjson.loads(encode_command(action, "p-1", DEST))
    assert set(body) == {"command", "id", "destination", "requestedAt"}  # no segments
    assert (body["command"], body["id"], body["destination"]) == (action.value, "p-1", DEST)
    assert before <= datetime.fromisoformat(body["requestedAt"]) <= datetime.now(UTC)
    # Segments mean nothing to a pause: left out even when given.
    assert "segments" not in orjson.loads(encode_command(action, "p-1", DEST, ["s1"]))


def test_encode_command_of_a_resend_is_encode_resend() -> None:
    body = orjson.loads(encode_command(Action.RESEND, "resend-1", DEST))
    assert body["command"] == "resend"
    assert "segments" in body
    assert body["segments"] is None
    assert parse_command(None, encode_command(Action.RESEND, "resend-1", DEST, ["s2", "s1"])) == (
        Command("resend-1", DEST, frozenset({"s1", "s2"}))
    )
    ours = orjson.loads(encode_command(Action.RESEND, "resend-1", DEST, ["s1"]))
    theirs = orjson.loads(encode_resend("resend-1", DEST, ["s1"]))
    assert {k: v for k, v in ours.items() if k != "requestedAt"} == {
        k: v for k, v in theirs.items() if k != "requestedAt"
    }


def test_a_resend_still_needs_its_segments_to_be_a_non_empty_list() -> None:
    assert parse_command(KEY, _command(segments=None)).segments is None
    bad = _bad(_command(segments=[]))
    assert bad.detail == "'segments' must be a non-empty list of segment ids"


def test_new_job_ids_name_their_action() -> None:
    for action in Action:
        job_id = new_job_id(action)
        assert job_id.startswith(f"{action.value}-")
        int(job_id.removeprefix(f"{action.value}-"), 16)
    assert new_job_id().startswith("resend-")


@given(st.sampled_from(list(Action)), _names, _names, st.none() | st.lists(_names, min_size=1))
def test_encode_command_round_trips(
    action: Action, command_id: str, destination: str, segments: list[str] | None
) -> None:
    command = parse_command(None, encode_command(action, command_id, destination, segments))
    expected = None if segments is None or action is not Action.RESEND else frozenset(segments)
    assert command == Command(command_id, destination, expected, action)
