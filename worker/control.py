"""Commands to the running workers, through the control topic.

The control topic has the input topics' partition count and is the agent's
third input: a command written to every partition is taken by whichever
worker owns each partition, in order with that partition's events, and it is
taken for good once its offset is committed (its effect, a job in the
``activations`` table, is durable by then). So a command reaches any number
of workers, and survives their restarts and rebalances.

``resend`` is the command here: ``send_resend`` writes it, ``wait_taken``
follows the group's committed offsets, ``wait_done`` reads the activations
changelog until every partition lists the job as finished.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from worker.events import BadEvent
from worker.vocabulary import DeadLetterReason as Reason

__all__ = ["Command", "encode_resend", "parse_command"]

RESEND = "resend"
# A command is a small JSON object; anything larger is not one of ours.
MAX_COMMAND_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    destination: str
    segments: frozenset[str] | None  # None: every segment the destination maps


def encode_resend(job_id: str, destination: str, segments: Sequence[str] | None) -> bytes:
    return orjson.dumps(
        {
            "command": RESEND,
            "id": job_id,
            "destination": destination,
            "segments": None if segments is None else list(segments),
            "requestedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )


def parse_command(key: bytes | None, value: bytes | None) -> Command:
    """A command from the control topic; ``BadEvent`` when it is not one."""
    if not value:
        raise BadEvent(Reason.MISSING_VALUE, "a command needs a value")
    if len(value) > MAX_COMMAND_BYTES:
        raise BadEvent(Reason.INVALID_FIELD, f"a command is at most {MAX_COMMAND_BYTES} bytes")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(Reason.INVALID_JSON, f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadEvent(Reason.NOT_AN_OBJECT, "a command is a JSON object")
    for name in ("command", "id", "destination"):
        if obj.get(name) is None:
            raise BadEvent(Reason.MISSING_FIELD, f"{name!r} is required")
        if not isinstance(obj[name], str) or not obj[name]:
            raise BadEvent(Reason.INVALID_FIELD, f"{name!r} must be a non-empty string")
    if obj["command"] != RESEND:
        raise BadEvent(Reason.INVALID_FIELD, f"unknown command {obj['command']!r}")
    segments = obj.get("segments")
    if segments is not None and (
        not isinstance(segments, list)
        or not segments
        or not all(isinstance(s, str) and s for s in segments)
    ):
        raise BadEvent(Reason.INVALID_FIELD, "'segments' must be a non-empty list of segment ids")
    return Command(obj["id"], obj["destination"], None if segments is None else frozenset(segments))


def new_job_id() -> str:
    return f"resend-{uuid.uuid4().hex[:12]}"


# -- the command's side -----------------------------------------------------------------


async def send_resend(
    producer: Any, topic: str, partitions: Sequence[int], value: bytes, key: bytes
) -> dict[int, int]:
    """Writes the command to each partition; returns its offset in each."""
    sent = await asyncio.gather(
        *[await producer.send(topic, value, key=key, partition=p) for p in partitions]
    )
    return {p: metadata.offset for p, metadata in zip(partitions, sent, strict=True)}


async def wait_taken(
    admin: Any,
    group: str,
    topic: str,
    offsets: dict[int, int],
    deadline: float,
    progress: Callable[[int, int], None],
) -> bool:
    """Waits until the group committed past the command in every partition."""
    from aiokafka import TopicPartition

    shown = -1
    while True:
        committed = await admin.list_consumer_group_offsets(group)
        taken = sum(
            1
            for p, offset in offsets.items()
            if (meta := committed.get(TopicPartition(topic, p))) is not None
            and meta.offset > offset
        )
        if taken != shown:
            progress(taken, len(offsets))
            shown = taken
        if taken == len(offsets):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)


def follow_changelog(
    states: dict[int, dict[str, Any]], key: bytes | None, value: bytes | None, destination: str
) -> None:
    """Applies one message of the activations changelog to ``states``: the latest
    activation of ``destination`` per partition (the table's JSON key is
    "<partition>/<destination name>")."""
    if key is None:
        return
    try:
        name = orjson.loads(key)
        partition, _, dest = name.partition("/")
        if dest != destination:
            return
        if value is None:
            states.pop(int(partition), None)
            return
        state = orjson.loads(value)
        if isinstance(state, dict):
            states[int(partition)] = state
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        return


def job_progress(states: dict[int, dict[str, Any]], job_id: str) -> tuple[int, int, int]:
    """(partitions done, records sent, records known in total) of ``job_id``."""
    done = sent = total = 0
    for state in states.values():
        finished = [count for i, count in state.get("done", ()) if i == job_id]
        if finished:
            done += 1
            sent += int(finished[0])
            total += int(finished[0])
            continue
        for job in state.get("jobs", ()):
            if job.get("id") == job_id:
                sent += int(job.get("sent") or 0)
                total += int(job.get("total") or 0)
    return done, sent, total
