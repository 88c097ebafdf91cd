"""What a destination has activated in one input partition, and the jobs that
send current members (backfill of newly mapped segments, re-send on request).

Pure: values in, values out. The worker keeps one ``Activation`` per
(destination, input partition) in the ``activations`` table, next to the
memberships it describes, so that it moves with its partition and survives
restarts (worker.backfill does the I/O).

- ``active``: the segments this destination maps, as of the last time the
  partition was planned. A segment that is in the configuration and not in
  ``active`` was mapped since: its current members are backfilled. One that is
  in ``active`` and no longer configured is dropped; nothing is sent for it.
- ``jobs``: what is left to send, first job first. Members are sent in the
  order of their profile ids; ``cursor`` is the last id sent, so that a crash
  resumes after it (at-least-once: the slice in flight may be sent again).
- ``done``: the last finished jobs and what they sent, which ``resend --wait`` reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from worker.vocabulary import JobKind

__all__ = [
    "Activation",
    "Job",
    "activation_from_json",
    "activation_key",
    "activation_to_json",
    "plan",
    "request",
    "split_key",
]

# Finished job ids kept per (destination, partition): enough for a command
# waiting on a request while others follow it.
KEPT_DONE = 16


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: JobKind
    segments: frozenset[str]  # members of any of these are sent
    started: float  # epoch seconds
    cursor: str | None = None  # the last profile id sent
    sent: int = 0
    total: int | None = None  # sent + left, once the partition was scanned


@dataclass(frozen=True, slots=True)
class Activation:
    active: frozenset[str]
    since: float  # when ``active`` last changed, epoch seconds
    jobs: tuple[Job, ...] = ()
    done: tuple[tuple[str, int], ...] = ()  # (job id, records sent), oldest first

    def with_job(self, job: Job) -> Activation:
        """``job`` in place of the pending job with its id."""
        jobs = tuple(job if j.id == job.id else j for j in self.jobs)
        return replace(self, jobs=jobs)

    def finish(self, job: Job) -> Activation:
        jobs = tuple(j for j in self.jobs if j.id != job.id)
        return replace(self, jobs=jobs, done=(*self.done, (job.id, job.sent))[-KEPT_DONE:])

    def knows(self, job_id: str) -> bool:
        return any(i == job_id for i, _ in self.done) or any(j.id == job_id for j in self.jobs)


def plan(
    current: Activation | None,
    mapped: frozenset[str],
    now: float,
    job_id: str,
    adopt: bool = False,
) -> Activation | None:
    """The activation for the configuration's ``mapped`` segments, or ``None``
    when ``current`` already matches it.

    Newly mapped segments (all of them for a destination never seen) get a
    backfill job, with id ``job_id``; ``adopt`` (a partition no version that
    tracks activations has planned: an upgrade) takes the mapping as it is,
    with no job. Unmapped segments leave the pending jobs; a job left with
    none is finished: nothing is sent for a segment no longer mapped.
    """
    if current is None:
        jobs = () if adopt or not mapped else (_backfill(job_id, mapped, now),)
        return Activation(mapped, now, jobs)
    if current.active == mapped:
        return None
    updated = Activation(mapped, now, done=current.done)
    for job in current.jobs:
        segments = job.segments & mapped
        if segments:
            updated = replace(updated, jobs=(*updated.jobs, replace(job, segments=segments)))
        else:
            updated = replace(updated, done=(*updated.done, (job.id, job.sent))[-KEPT_DONE:])
    added = mapped - current.active
    if added:
        updated = replace(updated, jobs=(*updated.jobs, _backfill(job_id, added, now)))
    return updated


def request(
    current: Activation, job_id: str, segments: frozenset[str], now: float
) -> Activation | None:
    """A re-send of the members of ``segments`` (already checked as mapped) queued
    after the pending jobs; ``None`` when this request was taken before (a
    command read again after a restart is not run twice)."""
    if current.knows(job_id):
        return None
    job = Job(job_id, JobKind.RESEND, segments, now)
    return replace(current, jobs=(*current.jobs, job))


def _backfill(job_id: str, segments: frozenset[str], now: float) -> Job:
    return Job(job_id, JobKind.BACKFILL, segments, now)


# -- keys of the activations table ------------------------------------------------


def activation_key(partition: int, destination: str) -> str:
    """The table key of a destination's activation in an input partition. The
    empty destination name (none is empty) marks a partition as planned."""
    return f"{partition}/{destination}"


def split_key(key: str) -> tuple[int, str]:
    """Inverse of ``activation_key``; ``ValueError`` when it is not one."""
    partition, slash, destination = key.partition("/")
    if not slash:
        raise ValueError(f"not an activation key: {key!r}")
    return int(partition), destination


# -- stored form -------------------------------------------------------------------


def activation_to_json(activation: Activation) -> dict[str, Any]:
    return {
        "active": sorted(activation.active),
        "since": activation.since,
        "jobs": [
            {
                "id": job.id,
                "kind": job.kind.value,
                "segments": sorted(job.segments),
                "started": job.started,
                "cursor": job.cursor,
                "sent": job.sent,
                "total": job.total,
            }
            for job in activation.jobs
        ],
        "done": [[job_id, sent] for job_id, sent in activation.done],
    }


def activation_from_json(obj: Any) -> Activation:
    """Inverse of ``activation_to_json``; raises ``ValueError`` on a malformed value."""
    try:
        return Activation(
            active=_strings(obj["active"]),
            since=float(obj["since"]),
            jobs=tuple(_job(job) for job in _list(obj.get("jobs", []))),
            done=tuple(_done(entry) for entry in _list(obj.get("done", []))),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"stored activation is malformed: {exc!r}") from None


def _job(obj: Mapping[str, Any]) -> Job:
    if not isinstance(obj, dict):
        raise TypeError(f"a job is an object, not {type(obj).__name__}")
    cursor = obj.get("cursor")
    total = obj.get("total")
    return Job(
        id=str(obj["id"]),
        kind=JobKind(obj["kind"]),
        segments=_strings(obj["segments"]),
        started=float(obj["started"]),
        cursor=None if cursor is None else str(cursor),
        sent=int(obj.get("sent", 0)),
        total=None if total is None else int(total),
    )


def _done(entry: Any) -> tuple[str, int]:
    job_id, sent = _list(entry)
    return str(job_id), int(sent)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"a list is expected, not {type(value).__name__}")
    return value


def _strings(values: Iterable[Any]) -> frozenset[str]:
    return frozenset(str(value) for value in _list(values))
