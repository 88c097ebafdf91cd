"""`python -m worker resend|pause|resume`: commands to the running workers
(worker.control carries them). ``resend`` sends a destination's current
members again; ``pause`` parks a destination's records (worker.parking) until
``resume``.

Prints one line per step on stdout. Exit codes: 0 taken (resend with
``--wait``: done); 1 Kafka unreachable or the control topic missing; 2 invalid
configuration or arguments (raised as ConfigError); 3 not taken (or not done)
within ``--timeout``; 4 refused by a worker whose configuration lacks the
destination or a segment (the dead-letter topic says which).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from worker.activation import Activation
from worker.control import (
    Action,
    Progress,
    encode_command,
    follow_changelog,
    follow_parking,
    job_progress,
    new_job_id,
)
from worker.kafka_client import kafka_client_kwargs
from worker.settings import ConfigError, Settings

EXIT_UNREACHABLE = 1
EXIT_TIMEOUT = 3
EXIT_REFUSED = 4
TAKEN_TIMEOUT_S = 120.0
PROGRESS_EVERY_S = 5.0

Say = Callable[[str], None]


def check_request(settings: Settings, destination: str, segments: Sequence[str]) -> None:
    """The destination exists and maps every segment asked for (ConfigError otherwise)."""
    names = [d.name for d in settings.destinations]
    if destination not in names:
        raise ConfigError(f"--destination: no destination named {destination!r} (have {names})")
    mapped = {s.id for s in settings.destinations[names.index(destination)].segments}
    unknown = [s for s in segments if s not in mapped]
    if unknown:
        raise ConfigError(f"--segment: destination {destination!r} does not map {unknown}")


async def resend(
    settings: Settings,
    destination: str,
    segments: Sequence[str],
    wait: bool,
    timeout_s: float | None,
    out: TextIO = sys.stdout,
) -> int:
    check_request(settings, destination, segments)
    if timeout_s is None and not wait:
        timeout_s = TAKEN_TIMEOUT_S
    deadline = float("inf") if timeout_s is None else time.monotonic() + timeout_s
    what = f"segments {list(segments)}" if segments else "every mapped segment"
    changelog = f"{settings.app_id}-activations-changelog"

    async def follow(job_id: str, partitions: int, described: Any, say: Say) -> int:
        follower = _Follower(settings, changelog, described, destination)
        return await follower.run(job_id, partitions, wait, deadline, say)

    return await _command(
        settings,
        Action.RESEND,
        destination,
        list(segments) or None,
        f"re-send of {destination!r} ({what})",
        changelog,
        deadline,
        timeout_s,
        follow,
        out,
    )


async def pause(
    settings: Settings,
    destination: str,
    paused: bool,
    timeout_s: float | None,
    out: TextIO = sys.stdout,
) -> int:
    """``pause``/``resume``: every partition's records of ``destination`` go to its
    parking topic (worker.parking) until resumed; done once every partition took it."""
    check_request(settings, destination, [])
    timeout_s = TAKEN_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    action = Action.PAUSE if paused else Action.RESUME
    changelog = f"{settings.app_id}-parking-changelog"

    async def follow(job_id: str, partitions: int, described: Any, say: Say) -> int:
        states = await _read_changelog(settings, described, destination)
        refused = [p for p in range(partitions) if states.get(p, False) != paused]
        if refused:
            say(
                f"{job_id}: refused in {len(refused)}/{partitions} partition(s): a worker there "
                f"has no destination {destination!r}; the dead-letter topic "
                f"{settings.kafka.dlq_topic!r} says why"
            )
            return EXIT_REFUSED
        if paused:
            say(
                f"{job_id}: {destination!r} paused: its records go to "
                f"{settings.parking_topic(destination)!r} until `resume`"
            )
        else:
            say(f"{job_id}: {destination!r} resumed: parked records are sent, then direct again")
        return 0

    return await _command(
        settings,
        action,
        destination,
        None,
        f"{action.value} of {destination!r}",
        changelog,
        deadline,
        timeout_s,
        follow,
        out,
    )


Follow = Callable[[str, int, Any, Say], Awaitable[int]]


async def _command(
    settings: Settings,
    action: Action,
    destination: str,
    segments: list[str] | None,
    what: str,
    changelog: str,
    deadline: float,
    timeout_s: float | None,
    follow: Follow,
    out: TextIO,
) -> int:
    """Writes the command to every partition of the control topic, waits until
    each is taken (the group committed past it), then ``follow``s its effect in
    ``changelog``."""
    kafka = settings.kafka
    topic = settings.control_topic

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    kwargs = kafka_client_kwargs(kafka)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, **kwargs)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", **kwargs)
    try:
        await admin.start()
        # Listed before described: a metadata request for a missing topic could
        # create it on a broker that creates topics on demand.
        existing = await admin.list_topics()
        missing = [t for t in (topic, changelog) if t not in existing]
        if missing:
            what = "control topic" if topic in missing else "topic"
            say(
                f"error: {what} {missing[0]!r} does not exist: start a worker of this "
                "version and configuration first (it creates the topic)"
            )
            return EXIT_UNREACHABLE
        described = {e["topic"]: e for e in await admin.describe_topics([topic, changelog])}
        partitions = sorted(p["partition"] for p in described[topic]["partitions"])
        await producer.start()
        job_id = new_job_id(action)
        value = encode_command(action, job_id, destination, segments)
        sent = await asyncio.gather(
            *[
                await producer.send(topic, value, key=destination.encode(), partition=p)
                for p in partitions
            ]
        )
        offsets = {p: metadata.offset for p, metadata in zip(partitions, sent, strict=True)}
        say(f"{job_id}: {what} sent to {len(partitions)} partition(s) of {topic}")
        if not await _wait_taken(admin, settings.app_id, topic, offsets, deadline, job_id, say):
            say(
                f"{job_id}: not taken by every partition within {timeout_s:.0f}s; are workers "
                f"with app_id {settings.app_id!r} running? (the request stays queued)"
            )
            return EXIT_TIMEOUT
        return await follow(job_id, len(partitions), described[changelog], say)
    except KafkaError as exc:
        say(f"error: kafka: {exc!r}")
        return EXIT_UNREACHABLE
    finally:
        await producer.stop()
        await admin.close()


async def _read_changelog(settings: Settings, described: Any, destination: str) -> dict[int, bool]:
    """Whether each partition's lane of ``destination`` is paused, per the parking changelog."""
    kafka = settings.kafka
    tps = [TopicPartition(described["topic"], p["partition"]) for p in described["partitions"]]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        **kafka_client_kwargs(kafka),
    )
    await consumer.start()
    paused: dict[int, bool] = {}
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while not all([await consumer.position(tp) >= end for tp, end in ends.items()]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    lane = follow_parking(record.key, record.value, destination)
                    if lane is not None:
                        paused[lane[0]] = lane[1]
    finally:
        await consumer.stop()
    return paused


async def _wait_taken(
    admin: Any,
    group: str,
    topic: str,
    offsets: dict[int, int],
    deadline: float,
    job_id: str,
    say: Say,
) -> bool:
    """Waits until the group committed past the request in every partition."""
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
            say(f"{job_id}: taken by {taken}/{len(offsets)} partition(s)")
            shown = taken
        if taken == len(offsets):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)


class _Follower:
    """Reads the activations changelog: a taken request is there (its state is
    written before its offset is committed), pending or done, unless the
    worker refused it."""

    def __init__(
        self, settings: Settings, changelog: str, described: Any, destination: str
    ) -> None:
        self._settings = settings
        self._tps = [TopicPartition(changelog, p["partition"]) for p in described["partitions"]]
        self._destination = destination
        self._job_id = ""
        self._states: dict[int, Activation] = {}
        # Where the job was seen per partition, kept once seen: a partition's
        # latest activation forgets a job pushed out of its ``done`` by later ones.
        self._seen: dict[int, tuple[bool, int, int]] = {}  # (done, sent, total)

    async def run(self, job_id: str, partitions: int, wait: bool, deadline: float, say: Say) -> int:
        self._job_id = job_id
        kafka = self._settings.kafka
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            enable_auto_commit=False,
            **kafka_client_kwargs(kafka),
        )
        await consumer.start()
        try:
            consumer.assign(self._tps)
            await consumer.seek_to_beginning(*self._tps)
            await self._read_to_end(consumer)
            progress = self._progress()
            if progress.taken < partitions:
                refused = partitions - progress.taken
                say(
                    f"{job_id}: refused in {refused}/{partitions} partition(s): a worker there "
                    f"does not map what was asked; the dead-letter topic "
                    f"{kafka.dlq_topic!r} says why"
                )
                return EXIT_REFUSED
            if not wait:
                say(f"{job_id}: taken; the workers send the members now (--wait follows them)")
                return 0
            shown_at = 0.0
            while True:
                progress = self._progress()
                if progress.done >= partitions:
                    say(
                        f"{job_id}: done in {progress.done}/{partitions} partition(s): "
                        f"{progress.sent} record(s) sent"
                    )
                    return 0
                now = time.monotonic()
                if now - shown_at >= PROGRESS_EVERY_S:
                    say(
                        f"{job_id}: {progress.done}/{partitions} partition(s) done, "
                        f"{progress.sent}/{progress.total} record(s) sent so far"
                    )
                    shown_at = now
                if now > deadline:
                    say(
                        f"{job_id}: not done within the timeout ({progress.done}/{partitions} "
                        "partitions); the workers go on with it"
                    )
                    return EXIT_TIMEOUT
                await self._read(consumer, 1000)
        finally:
            await consumer.stop()

    async def _read(self, consumer: Any, timeout_ms: int) -> None:
        fetched = await consumer.getmany(timeout_ms=timeout_ms)
        for records in fetched.values():
            for record in records:
                partition = follow_changelog(
                    self._states, record.key, record.value, self._destination
                )
                if partition is None or self._seen.get(partition, (False, 0, 0))[0]:
                    continue  # nothing of this destination, or already done there
                state = self._states.get(partition)
                if state is None:
                    continue
                seen = job_progress({partition: state}, self._job_id)
                if seen.taken:
                    self._seen[partition] = (bool(seen.done), seen.sent, seen.total)

    def _progress(self) -> Progress:
        done = [v for v in self._seen.values() if v[0]]
        pending = [v for v in self._seen.values() if not v[0]]
        return Progress(
            len(done),
            len(pending),
            sum(v[1] for v in self._seen.values()),
            sum(v[2] for v in self._seen.values()),
        )

    async def _read_to_end(self, consumer: Any) -> None:
        ends = await consumer.end_offsets(self._tps)
        while True:
            positions = [await consumer.position(tp) for tp in ends]
            if all(p >= end for p, end in zip(positions, ends.values(), strict=True)):
                return
            await self._read(consumer, 500)
