"""worker.resend's reading of the activations changelog: when a request counts
as taken, refused or done in each partition (the command's exit codes)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson

from worker.activation import Activation, Job, activation_key, activation_to_json
from worker.resend import _Follower
from worker.settings import Settings
from worker.vocabulary import JobKind

DEST = "Dest One"
SETTINGS = Settings.model_validate(
    {
        "destinations": [
            {"name": DEST, "stream": "s", "region": "us-east-1", "segments": [{"id": "a"}]}
        ]
    }
)


class Consumer:
    """Hands out the queued changelog messages, one getmany at a time."""

    def __init__(self) -> None:
        self.queued: list[list[tuple[bytes | None, bytes | None]]] = []

    async def getmany(self, timeout_ms: int) -> dict[Any, list[Any]]:
        if not self.queued:
            return {}
        messages = self.queued.pop(0)
        return {"tp": [SimpleNamespace(key=k, value=v) for k, v in messages]}


def message(partition: int, activation: Activation, dest: str = DEST) -> tuple[bytes, bytes]:
    key = orjson.dumps(activation_key(partition, dest))
    return key, orjson.dumps(activation_to_json(activation))


def pending(job_id: str, sent: int = 0, total: int | None = None) -> Activation:
    job = Job(job_id, JobKind.RESEND, frozenset({"a"}), 1.0, sent=sent, total=total)
    return Activation(frozenset({"a"}), 1.0, jobs=(job,))


def done(*jobs: tuple[str, int]) -> Activation:
    return Activation(frozenset({"a"}), 1.0, done=jobs)


def follower(job_id: str) -> _Follower:
    described = {"partitions": [{"partition": p} for p in range(3)]}
    follower = _Follower(SETTINGS, "app-activations-changelog", described, DEST)
    follower._job_id = job_id
    return follower


async def test_a_partition_that_never_lists_the_job_refused_it() -> None:
    consumer = Consumer()
    consumer.queued = [[message(0, pending("r1", 0, 4)), message(1, done(("r1", 2)))]]
    reading = follower("r1")
    await reading._read(consumer, 0)
    progress = reading._progress()
    assert (progress.taken, progress.done, progress.pending) == (2, 1, 1)
    assert (progress.sent, progress.total) == (2, 6)  # partition 2 refused: not counted


async def test_a_job_pushed_out_of_done_by_later_ones_stays_done() -> None:
    consumer = Consumer()
    later = [(f"r{i}", 1) for i in range(2, 18)]
    consumer.queued = [
        [message(0, pending("r1", 3, 5))],
        [message(0, done(("r1", 5)))],
        [message(0, done(*later))],  # r1 no longer among the last finished jobs
    ]
    reading = follower("r1")
    for _ in range(3):
        await reading._read(consumer, 0)
    progress = reading._progress()
    assert (progress.done, progress.pending, progress.sent) == (1, 0, 5)


async def test_other_destinations_and_the_marker_are_not_counted() -> None:
    consumer = Consumer()
    consumer.queued = [
        [
            message(0, pending("r1"), dest="Dest Two"),
            (orjson.dumps(activation_key(1, "")), orjson.dumps({"since": 1.0})),
            (b"not json", b"{}"),
        ]
    ]
    reading = follower("r1")
    await reading._read(consumer, 0)
    assert reading._progress().taken == 0
