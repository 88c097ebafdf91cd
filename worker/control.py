"""Commands to the running workers, through the control topic.

The control topic has the input topics' partition count and is the agent's
third input: a command written to every partition is taken by whichever
worker owns each partition, in order with that partition's events, and it is
taken for good once its offset is committed (its effect, a job in the
``activations`` table, is durable by then). So a command reaches any number
of workers, and survives their restarts and rebalances.

Commands: ``resend`` (worker.resend runs it; its progress is read from the
activations changelog, here), ``pause`` and ``resume`` (a destination's
records go to its parking topic, worker.parking, until resumed).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import orjson

from worker.activation import Activation, activation_from_json, split_key
from worker.events import BadEvent
from worker.vocabulary import DeadLetterReason as Reason

__all__ = [
    "Action",
    "Command",
    "Progress",
    "encode_command",
    "encode_resend",
    "follow_changelog",
    "follow_parking",
    "job_progress",
    "new_job_id",
    "parse_command",
]


class Action(StrEnum):
    RESEND = "resend"
    PAUSE = "pause"
    RESUME = "resume"


# A command is a small JSON object; anything larger is not one of ours.
MAX_COMMAND_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    destination: str
    segments: frozenset[str] | None  # None: every segment the destination maps
    action: Action = Action.RESEND


def encode_resend(job_id: str, destination: str, segments: Sequence[str] | None) -> bytes:
    return encode_command(Action.RESEND, job_id, destination, segments)


def encode_command(
    action: Action, command_id: str, destination: str, segments: Sequence[str] | None = None
) -> bytes:
    value: dict[str, object] = {
        "command": action.value,
        "id": command_id,
        "destination": destination,
    }
    if action is Action.RESEND:
        value["segments"] = None if segments is None else list(segments)
    value["requestedAt"] = datetime.now(UTC).isoformat(timespec="seconds")
    return orjson.dumps(value)


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
    try:
        action = Action(obj["command"])
    except ValueError:
        raise BadEvent(Reason.INVALID_FIELD, f"unknown command {obj['command']!r}") from None
    segments = obj.get("segments")
    if segments is not None and (
        not isinstance(segments, list)
        or not segments
        or not all(isinstance(s, str) and s for s in segments)
    ):
        raise BadEvent(Reason.INVALID_FIELD, "'segments' must be a non-empty list of segment ids")
    return Command(
        obj["id"],
        obj["destination"],
        None if segments is None else frozenset(segments),
        action,
    )


def new_job_id(action: Action = Action.RESEND) -> str:
    return f"{action.value}-{uuid.uuid4().hex[:12]}"


# -- following a request -------------------------------------------------------------


def follow_changelog(
    states: dict[int, Activation], key: bytes | None, value: bytes | None, destination: str
) -> int | None:
    """Applies one message of the activations changelog to ``states``: the latest
    activation of ``destination`` per partition. Returns the partition it
    changed; what is not one is skipped (None)."""
    try:
        name = orjson.loads(key) if key is not None else None
        partition, dest = split_key(name) if isinstance(name, str) else (None, None)
        if partition is None or dest != destination:
            return None
        if value is None:
            states.pop(partition, None)
        else:
            states[partition] = activation_from_json(orjson.loads(value))
    except (orjson.JSONDecodeError, ValueError):
        return None
    return partition


def follow_parking(
    key: bytes | None, value: bytes | None, destination: str
) -> tuple[int, bool] | None:
    """(partition, paused) from one message of the parking changelog, when it is
    ``destination``'s lane; None otherwise."""
    try:
        name = orjson.loads(key) if key is not None else None
        partition, dest = split_key(name) if isinstance(name, str) else (None, None)
        if partition is None or dest != destination:
            return None
        lane = orjson.loads(value) if value is not None else {}
        return partition, bool(isinstance(lane, dict) and lane.get("paused"))
    except (orjson.JSONDecodeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a request stands in the partitions whose activation was read."""

    done: int  # partitions that finished it
    pending: int  # partitions that hold it, not finished
    sent: int  # records sent, in both
    total: int  # records known to send, in both

    @property
    def taken(self) -> int:
        return self.done + self.pending


def job_progress(states: dict[int, Activation], job_id: str) -> Progress:
    done = pending = sent = total = 0
    for state in states.values():
        finished = [count for i, count in state.done if i == job_id]
        if finished:
            done += 1
            sent += finished[0]
            total += finished[0]
            continue
        for job in state.jobs:
            if job.id == job_id:
                pending += 1
                sent += job.sent
                total += job.total or job.sent
    return Progress(done, pending, sent, total)
