"""Activations (worker.activation): planning of backfill jobs when the mapped
segments change, re-send requests, finished jobs and their stored form."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.activation import (
    KEPT_DONE,
    Activation,
    Job,
    activation_from_json,
    activation_key,
    activation_to_json,
    plan,
    request,
    split_key,
)
from worker.vocabulary import JobKind

T0 = 1_700_000_000.0
T1 = T0 + 60.5
A, B, C, D = "seg-a", "seg-b", "seg-c", "seg-d"
JOB = "backfill-1"  # the id plan() gives a new backfill job


def _segs(*ids: str) -> frozenset[str]:
    return frozenset(ids)


def _resend(job_id: str, *segments: str, sent: int = 0) -> Job:
    return Job(job_id, JobKind.RESEND, _segs(*segments), T0, sent=sent)


# --- plan: a destination never seen ---------------------------------------------


def test_never_seen_destination_backfills_every_mapped_segment() -> None:
    activation = plan(None, _segs(A, B), T0, JOB)
    assert activation is not None
    assert activation.active == _segs(A, B)
    assert activation.since == T0
    assert activation.done == ()
    assert activation.jobs == (Job(JOB, JobKind.BACKFILL, _segs(A, B), T0),)
    [job] = activation.jobs
    assert job.cursor is None
    assert job.sent == 0
    assert job.total is None


def test_the_backfill_job_has_the_id_given() -> None:
    first, second = plan(None, _segs(A), T0, "job-x"), plan(None, _segs(A), T0, "job-y")
    assert first is not None
    assert second is not None
    assert [job.id for job in first.jobs] == ["job-x"]
    assert [job.id for job in second.jobs] == ["job-y"]


def test_adopting_a_never_seen_destination_takes_the_mapping_with_no_job() -> None:
    assert plan(None, _segs(A, B), T0, JOB, adopt=True) == Activation(_segs(A, B), T0)


@pytest.mark.parametrize("adopt", [True, False])
def test_never_seen_destination_mapping_nothing_has_no_job(adopt: bool) -> None:
    assert plan(None, frozenset(), T0, JOB, adopt=adopt) == Activation(frozenset(), T0)


# --- plan: a known destination ----------------------------------------------------


@pytest.mark.parametrize("adopt", [True, False])
@pytest.mark.parametrize("mapped", [frozenset(), _segs(A), _segs(A, B)])
def test_unchanged_mapping_needs_no_new_activation(mapped: frozenset[str], adopt: bool) -> None:
    current = Activation(mapped, T0, jobs=(_resend("r1", *mapped),), done=(("old", 3),))
    assert plan(current, mapped, T1, JOB, adopt=adopt) is None


@pytest.mark.parametrize("adopt", [True, False])
def test_a_planned_activation_is_stable(adopt: bool) -> None:
    first = plan(None, _segs(A, B), T0, JOB, adopt=adopt)
    assert first is not None
    assert plan(first, _segs(A, B), T1, "backfill-2") is None


def test_added_segments_are_backfilled_alone() -> None:
    current = Activation(_segs(A), T0, done=(("old", 3),))
    updated = plan(current, _segs(A, B, C), T1, JOB)
    assert updated is not None
    assert updated.active == _segs(A, B, C)
    assert updated.since == T1
    assert updated.done == (("old", 3),)
    assert updated.jobs == (Job(JOB, JobKind.BACKFILL, _segs(B, C), T1),)


def test_adopt_does_not_apply_to_a_known_destination() -> None:
    """Only a destination never seen is adopted: once known, a segment added to
    it is always backfilled."""
    current = Activation(_segs(A), T0)
    assert plan(current, _segs(A, B), T1, JOB, adopt=True) == Activation(
        _segs(A, B), T1, jobs=(Job(JOB, JobKind.BACKFILL, _segs(B), T1),)
    )


def test_a_known_destination_mapping_nothing_before_backfills_all() -> None:
    current = Activation(frozenset(), T0)
    updated = plan(current, _segs(A, B), T1, JOB)
    assert updated == Activation(
        _segs(A, B), T1, jobs=(Job(JOB, JobKind.BACKFILL, _segs(A, B), T1),)
    )


def test_added_segments_are_backfilled_after_the_pending_jobs() -> None:
    pending = Job("backfill-1", JobKind.BACKFILL, _segs(A), T0, cursor="p-9", sent=9, total=20)
    resend = _resend("r1", A)
    current = Activation(_segs(A), T0, jobs=(pending, resend))
    updated = plan(current, _segs(A, B), T1, "backfill-2")
    assert updated is not None
    # the pending jobs are kept as they are, progress included
    assert updated.jobs == (
        pending,
        resend,
        Job("backfill-2", JobKind.BACKFILL, _segs(B), T1),
    )


def test_removed_segments_are_dropped_and_nothing_is_sent_for_them() -> None:
    current = Activation(_segs(A, B, C), T0)
    updated = plan(current, _segs(A), T1, JOB)
    assert updated == Activation(_segs(A), T1)


def test_removed_segments_leave_the_pending_jobs() -> None:
    job = Job("backfill-1", JobKind.BACKFILL, _segs(A, B, C), T0, cursor="p-4", sent=4, total=10)
    current = Activation(_segs(A, B, C), T0, jobs=(job, _resend("r1", B, C)))
    updated = plan(current, _segs(A, C), T1, JOB)
    assert updated is not None
    assert updated.active == _segs(A, C)
    assert updated.jobs == (
        Job("backfill-1", JobKind.BACKFILL, _segs(A, C), T0, cursor="p-4", sent=4, total=10),
        _resend("r1", C),
    )
    assert updated.done == ()


def test_a_job_left_with_no_segment_is_finished_with_what_it_sent() -> None:
    current = Activation(
        _segs(A, B),
        T0,
        jobs=(_resend("r1", B, sent=7), _resend("r2", A, B, sent=2), _resend("r3", B)),
        done=(("old", 1),),
    )
    updated = plan(current, _segs(A), T1, JOB)
    assert updated is not None
    assert updated.jobs == (_resend("r2", A, sent=2),)
    assert updated.done == (("old", 1), ("r1", 7), ("r3", 0))
    assert updated.knows("r1")
    assert updated.knows("r3")


def test_added_and_removed_at_once() -> None:
    current = Activation(_segs(A, B), T0, jobs=(_resend("r1", B, sent=5),))
    updated = plan(current, _segs(A, C), T1, JOB)
    assert updated == Activation(
        _segs(A, C),
        T1,
        jobs=(Job(JOB, JobKind.BACKFILL, _segs(C), T1),),
        done=(("r1", 5),),
    )


def test_unmapping_everything_finishes_every_job() -> None:
    current = Activation(_segs(A, B), T0, jobs=(_resend("r1", A, sent=1), _resend("r2", B)))
    updated = plan(current, frozenset(), T1, JOB)
    assert updated == Activation(frozenset(), T1, done=(("r1", 1), ("r2", 0)))


def test_plan_does_not_change_its_input() -> None:
    jobs = (_resend("r1", A, B),)
    current = Activation(_segs(A, B), T0, jobs=jobs, done=(("old", 1),))
    plan(current, _segs(A, C), T1, JOB)
    assert current == Activation(_segs(A, B), T0, jobs=jobs, done=(("old", 1),))


def test_plan_keeps_at_most_kept_done_finished_jobs() -> None:
    done = tuple((f"old-{i}", i) for i in range(KEPT_DONE))
    jobs = tuple(_resend(f"r{i}", B, sent=i) for i in range(3))
    current = Activation(_segs(A, B), T0, jobs=jobs, done=done)
    updated = plan(current, _segs(A), T1, JOB)
    assert updated is not None
    assert len(updated.done) == KEPT_DONE
    # the oldest go first; the newly finished are last, in job order
    assert updated.done == (*done[3:], ("r0", 0), ("r1", 1), ("r2", 2))


# --- request ------------------------------------------------------------------------


def test_request_queues_a_resend_after_the_pending_jobs() -> None:
    pending = Job("backfill-1", JobKind.BACKFILL, _segs(A), T0, sent=3)
    current = Activation(_segs(A, B), T0, jobs=(pending,), done=(("old", 2),))
    updated = request(current, "r1", _segs(B), T1)
    assert updated == Activation(
        _segs(A, B),
        T0,
        jobs=(pending, Job("r1", JobKind.RESEND, _segs(B), T1)),
        done=(("old", 2),),
    )


def test_request_on_an_idle_activation() -> None:
    updated = request(Activation(_segs(A), T0), "r1", _segs(A), T1)
    assert updated is not None
    assert updated.jobs == (Job("r1", JobKind.RESEND, _segs(A), T1),)
    assert updated.active == _segs(A)
    assert updated.since == T0  # a request does not change the mapping


def test_requests_are_run_in_order() -> None:
    activation = Activation(_segs(A, B), T0)
    for job_id in ("r1", "r2", "r3"):
        updated = request(activation, job_id, _segs(A), T1)
        assert updated is not None
        activation = updated
    assert [job.id for job in activation.jobs] == ["r1", "r2", "r3"]


def test_request_pending_is_not_taken_twice() -> None:
    current = Activation(_segs(A, B), T0, jobs=(_resend("r1", A, sent=4),))
    assert request(current, "r1", _segs(A, B), T1) is None


def test_request_done_is_not_taken_twice() -> None:
    current = Activation(_segs(A, B), T0, done=(("r1", 4),))
    assert request(current, "r1", _segs(A), T1) is None


def test_request_with_a_backfill_id_is_not_taken() -> None:
    current = plan(None, _segs(A), T0, JOB)
    assert current is not None
    assert request(current, JOB, _segs(A), T1) is None


# --- keys of the activations table --------------------------------------------------


@pytest.mark.parametrize(
    ("partition", "destination", "key"),
    [
        (0, "Dest One", "0/Dest One"),
        (17, "d", "17/d"),
        (3, "a/b", "3/a/b"),  # a name may hold a slash: the first one splits
        (2, "", "2/"),  # the partition's "planned" marker
        (1, "Zielort ☃", "1/Zielort ☃"),
    ],
)
def test_activation_key_and_split_key(partition: int, destination: str, key: str) -> None:
    assert activation_key(partition, destination) == key
    assert split_key(key) == (partition, destination)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("3", id="no-slash"),
        pytest.param("Dest One", id="name-only"),
        pytest.param("/Dest One", id="partition-empty"),
        pytest.param("x/Dest One", id="partition-not-a-number"),
        pytest.param("1.5/Dest One", id="partition-fraction"),
        pytest.param("one/Dest One", id="partition-word"),
    ],
)
def test_split_key_refuses_what_is_not_a_key(key: str) -> None:
    with pytest.raises(ValueError, match=r"not an activation key|invalid literal for int"):
        split_key(key)


# --- Activation methods --------------------------------------------------------------


def test_with_job_replaces_the_job_with_its_id() -> None:
    r1, r2 = _resend("r1", A), _resend("r2", B)
    current = Activation(_segs(A, B), T0, jobs=(r1, r2), done=(("old", 1),))
    progressed = Job("r1", JobKind.RESEND, _segs(A), T0, cursor="p-5", sent=5, total=12)
    assert current.with_job(progressed) == Activation(
        _segs(A, B), T0, jobs=(progressed, r2), done=(("old", 1),)
    )
    assert current.jobs == (r1, r2)  # frozen: a new value


def test_with_job_of_an_unknown_id_changes_nothing() -> None:
    current = Activation(_segs(A), T0, jobs=(_resend("r1", A),))
    assert current.with_job(_resend("r2", A, sent=9)) == current


def test_finish_moves_the_job_to_done() -> None:
    r1, r2 = _resend("r1", A, sent=3), _resend("r2", B)
    current = Activation(_segs(A, B), T0, jobs=(r1, r2), done=(("old", 1),))
    finished = current.finish(Job("r1", JobKind.RESEND, _segs(A), T0, cursor="p-8", sent=8))
    assert finished == Activation(_segs(A, B), T0, jobs=(r2,), done=(("old", 1), ("r1", 8)))
    assert finished.knows("r1")


def test_finish_keeps_at_most_kept_done() -> None:
    activation = Activation(_segs(A), T0)
    for i in range(KEPT_DONE + 5):
        activation = request(activation, f"r{i}", _segs(A), T1) or activation
        activation = activation.finish(activation.jobs[0])
    assert activation.jobs == ()
    assert activation.done == tuple((f"r{i}", 0) for i in range(5, KEPT_DONE + 5))
    assert not activation.knows("r4")
    assert activation.knows("r5")


def test_knows() -> None:
    activation = Activation(_segs(A), T0, jobs=(_resend("pending", A),), done=(("done", 2),))
    assert activation.knows("pending")
    assert activation.knows("done")
    assert not activation.knows("other")
    assert not activation.knows("")
    assert not Activation(frozenset(), T0).knows("pending")


def test_kept_done_value() -> None:
    assert KEPT_DONE == 16


# --- stored form -----------------------------------------------------------------------


def test_json_form() -> None:
    activation = Activation(
        _segs(B, A),
        T0,
        jobs=(
            Job("backfill-1", JobKind.BACKFILL, _segs(C, A), T0, cursor="p-3", sent=3, total=9),
            Job("r1", JobKind.RESEND, _segs(B), T1),
        ),
        done=(("r0", 5),),
    )
    stored = activation_to_json(activation)
    assert stored == {
        "active": [A, B],
        "since": T0,
        "jobs": [
            {
                "id": "backfill-1",
                "kind": "backfill",
                "segments": [A, C],
                "started": T0,
                "cursor": "p-3",
                "sent": 3,
                "total": 9,
            },
            {
                "id": "r1",
                "kind": "resend",
                "segments": [B],
                "started": T1,
                "cursor": None,
                "sent": 0,
                "total": None,
            },
        ],
        "done": [["r0", 5]],
    }
    assert activation_from_json(orjson.loads(orjson.dumps(stored))) == activation


def test_json_of_an_empty_activation() -> None:
    stored = activation_to_json(Activation(frozenset(), T0))
    assert stored == {"active": [], "since": T0, "jobs": [], "done": []}
    assert activation_from_json(stored) == Activation(frozenset(), T0)


def test_json_jobs_and_done_may_be_absent() -> None:
    assert activation_from_json({"active": [A], "since": 5}) == Activation(_segs(A), 5.0)


def test_json_optional_job_fields_may_be_absent() -> None:
    stored = {
        "active": [A],
        "since": T0,
        "jobs": [{"id": "r1", "kind": "resend", "segments": [A], "started": T1}],
    }
    assert activation_from_json(stored) == Activation(
        _segs(A), T0, jobs=(Job("r1", JobKind.RESEND, _segs(A), T1),)
    )


def test_json_integer_times_are_read_as_floats() -> None:
    activation = activation_from_json({"active": [], "since": 12, "jobs": [], "done": []})
    assert isinstance(activation.since, float)
    assert activation.since == 12.0


def _valid() -> dict[str, Any]:
    return {
        "active": [A],
        "since": T0,
        "jobs": [
            {
                "id": "r1",
                "kind": "resend",
                "segments": [A],
                "started": T0,
                "cursor": None,
                "sent": 0,
                "total": None,
            }
        ],
        "done": [["r0", 1]],
    }


def test_valid_fixture_is_accepted() -> None:
    assert activation_from_json(_valid()).knows("r1")


def _without(key: str) -> dict[str, Any]:
    obj = _valid()
    del obj[key]
    return obj


def _with(key: str, value: Any) -> dict[str, Any]:
    obj = _valid()
    obj[key] = value
    return obj


def _job_without(key: str) -> dict[str, Any]:
    obj = _valid()
    del obj["jobs"][0][key]
    return obj


def _job_with(key: str, value: Any) -> dict[str, Any]:
    obj = _valid()
    obj["jobs"][0][key] = value
    return obj


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(None, id="null"),
        pytest.param([], id="list"),
        pytest.param("activation", id="string"),
        pytest.param(42, id="number"),
        pytest.param({}, id="empty-object"),
        # missing keys
        pytest.param(_without("active"), id="no-active"),
        pytest.param(_without("since"), id="no-since"),
        pytest.param(_job_without("id"), id="job-no-id"),
        pytest.param(_job_without("kind"), id="job-no-kind"),
        pytest.param(_job_without("segments"), id="job-no-segments"),
        pytest.param(_job_without("started"), id="job-no-started"),
        # a string instead of a list of segments
        pytest.param(_with("active", A), id="active-string"),
        pytest.param(_job_with("segments", A), id="job-segments-string"),
        pytest.param(_with("active", None), id="active-null"),
        pytest.param(_with("active", 3), id="active-number"),
        pytest.param(_job_with("segments", None), id="job-segments-null"),
        # an unknown job kind
        pytest.param(_job_with("kind", "replay"), id="job-kind-unknown"),
        pytest.param(_job_with("kind", "RESEND"), id="job-kind-upper-case"),
        pytest.param(_job_with("kind", None), id="job-kind-null"),
        # non-numeric times and counts
        pytest.param(_with("since", "yesterday"), id="since-text"),
        pytest.param(_with("since", None), id="since-null"),
        pytest.param(_with("since", [1]), id="since-list"),
        pytest.param(_job_with("started", "now"), id="job-started-text"),
        pytest.param(_job_with("sent", "many"), id="job-sent-text"),
        pytest.param(_job_with("sent", None), id="job-sent-null"),
        pytest.param(_job_with("total", "all"), id="job-total-text"),
        # jobs and done of the wrong shape
        pytest.param(_with("jobs", None), id="jobs-null"),
        pytest.param(_with("jobs", 1), id="jobs-number"),
        pytest.param(_with("done", None), id="done-null"),
        pytest.param(_with("done", [["r0"]]), id="done-pair-too-short"),
        pytest.param(_with("done", [["r0", 1, 2]]), id="done-pair-too-long"),
        pytest.param(_with("done", [["r0", "many"]]), id="done-count-text"),
        pytest.param(_with("done", [["r0", None]]), id="done-count-null"),
        pytest.param(_with("done", [5]), id="done-item-number"),
        # jobs that are not objects
        pytest.param(_with("jobs", ["r1"]), id="job-string"),
        pytest.param(_with("jobs", [None]), id="job-null"),
        pytest.param(_with("jobs", [["r1", "resend"]]), id="job-list"),
        pytest.param(_with("jobs", "r1"), id="jobs-string"),
    ],
)
def test_malformed_json_is_refused(obj: Any) -> None:
    with pytest.raises(ValueError, match="stored activation is malformed"):
        activation_from_json(obj)


def test_malformed_json_error_has_no_chained_cause() -> None:
    with pytest.raises(ValueError, match="stored activation is malformed") as info:
        activation_from_json(_with("since", "yesterday"))
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# --- properties -----------------------------------------------------------------------

_ids = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
_segment_sets = st.frozensets(_ids, max_size=5)
_times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
_counts = st.integers(min_value=0, max_value=2**53)
_jobs = st.builds(
    Job,
    id=_ids,
    kind=st.sampled_from(list(JobKind)),
    segments=_segment_sets,
    started=_times,
    cursor=st.none() | _ids,
    sent=_counts,
    total=st.none() | _counts,
)
_activations = st.builds(
    Activation,
    active=_segment_sets,
    since=_times,
    jobs=st.lists(_jobs, max_size=4).map(tuple),
    done=st.lists(st.tuples(_ids, _counts), max_size=KEPT_DONE).map(tuple),
)


@given(_activations)
def test_json_round_trip_is_exact(activation: Activation) -> None:
    encoded = orjson.dumps(activation_to_json(activation))
    assert activation_from_json(orjson.loads(encoded)) == activation


@given(_activations)
def test_json_form_is_canonical(activation: Activation) -> None:
    stored = activation_to_json(activation)
    assert stored["active"] == sorted(stored["active"])
    assert all(job["segments"] == sorted(job["segments"]) for job in stored["jobs"])
    # encoding the decoded form again gives the same bytes
    again = activation_to_json(activation_from_json(orjson.loads(orjson.dumps(stored))))
    assert orjson.dumps(again) == orjson.dumps(stored)


_names = st.sampled_from([A, B, C, D])
_mappings = st.frozensets(_names)


@given(_mappings, st.lists(_mappings, max_size=6), st.booleans())
def test_plan_invariants(first: frozenset[str], changes: list[frozenset[str]], adopt: bool) -> None:
    activation = plan(None, first, T0, "backfill-0", adopt=adopt)
    assert activation is not None
    assert activation.active == first
    # adopted: nothing to send; otherwise one backfill of everything mapped, if any
    assert [job.segments for job in activation.jobs] == ([] if adopt or not first else [first])
    for step, mapped in enumerate(changes, start=1):
        now = T0 + step
        job_id = f"backfill-{step}"
        # adopt only applies to a destination never seen: it changes nothing here
        updated = plan(activation, mapped, now, job_id, adopt=adopt)
        assert updated == plan(activation, mapped, now, job_id)
        if mapped == activation.active:
            assert updated is None
            continue
        assert updated is not None
        assert updated.active == mapped
        assert updated.since == now
        # every pending job sends some mapped segment, and only mapped ones
        assert all(job.segments and job.segments <= mapped for job in updated.jobs)
        assert len(updated.done) <= KEPT_DONE
        # no job is lost: every job is still pending or finished
        for job in activation.jobs:
            assert updated.knows(job.id)
        # the newly mapped segments, and only they, are in a new backfill job, last
        added = mapped - activation.active
        new = [job for job in updated.jobs if job.id == job_id]
        if added:
            assert new == [Job(job_id, JobKind.BACKFILL, added, now)]
            assert updated.jobs[-1] == new[0]
        else:
            assert new == []
        activation = updated


@given(st.integers(min_value=0, max_value=10_000), _ids)
def test_split_key_inverts_activation_key(partition: int, destination: str) -> None:
    assert split_key(activation_key(partition, destination)) == (partition, destination)


def test_round_trip_keeps_float_precision() -> None:
    since = math.nextafter(T0, math.inf)
    activation = Activation(_segs(A), since)
    assert activation_from_json(orjson.loads(orjson.dumps(activation_to_json(activation)))) == (
        activation
    )
