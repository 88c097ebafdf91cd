"""`python -m worker resend`: ask the running workers to send a destination's
current members again (worker.control carries the request).

Prints one line per step on stdout; exit codes: 0 taken (with ``--wait``:
done), 1 Kafka unreachable or the control topic missing, 2 invalid
configuration or arguments (raised as ConfigError), 3 not taken (or not done)
within ``--timeout``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from worker.control import (
    encode_resend,
    follow_changelog,
    job_progress,
    new_job_id,
    send_resend,
    wait_taken,
)
from worker.kafka_client import kafka_client_kwargs
from worker.settings import ConfigError, Settings

EXIT_UNREACHABLE = 1
EXIT_TIMEOUT = 3
TAKEN_TIMEOUT_S = 120.0
PROGRESS_EVERY_S = 5.0


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
    kafka = settings.kafka
    topic = settings.control_topic
    if timeout_s is None:
        timeout_s = None if wait else TAKEN_TIMEOUT_S
    deadline = float("inf") if timeout_s is None else time.monotonic() + timeout_s

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    kwargs = kafka_client_kwargs(kafka)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, **kwargs)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", **kwargs)
    try:
        await admin.start()
        await producer.start()
        described = await admin.describe_topics([topic])
        if not described or described[0]["error_code"] != 0 or not described[0]["partitions"]:
            say(
                f"error: control topic {topic!r} does not exist: start a worker of this "
                "configuration first (it creates the topic)"
            )
            return EXIT_UNREACHABLE
        partitions = sorted(p["partition"] for p in described[0]["partitions"])
        job_id = new_job_id()
        value = encode_resend(job_id, destination, list(segments) or None)
        offsets = await send_resend(producer, topic, partitions, value, destination.encode())
        what = f"segments {list(segments)}" if segments else "every mapped segment"
        say(
            f"{job_id}: re-send of {destination!r} ({what}) sent to {len(partitions)} "
            f"partition(s) of {topic}"
        )

        def taken(count: int, total: int) -> None:
            say(f"{job_id}: taken by {count}/{total} partition(s)")

        if not await wait_taken(admin, settings.app_id, topic, offsets, deadline, taken):
            say(
                f"{job_id}: not taken by every partition within {timeout_s:.0f}s; are workers "
                f"with app_id {settings.app_id!r} running? (the request stays queued)"
            )
            return EXIT_TIMEOUT
        if not wait:
            say(f"{job_id}: taken; the workers send the members now (--wait follows them)")
            return 0
        changelog = f"{settings.app_id}-activations-changelog"
        (entry,) = await admin.describe_topics([changelog])
        changelog_partitions = [p["partition"] for p in entry["partitions"]]
        return await _wait_done(
            settings, job_id, destination, len(partitions), changelog_partitions, deadline, say
        )
    except KafkaError as exc:
        say(f"error: kafka: {exc!r}")
        return EXIT_UNREACHABLE
    finally:
        await producer.stop()
        await admin.close()


async def _wait_done(
    settings: Settings,
    job_id: str,
    destination: str,
    partitions: int,
    changelog_partitions: Sequence[int],
    deadline: float,
    say: Any,
) -> int:
    """Follows the activations changelog until every partition finished the job."""
    kafka = settings.kafka
    changelog = f"{settings.app_id}-activations-changelog"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        **kafka_client_kwargs(kafka),
    )
    await consumer.start()
    try:
        tps = [TopicPartition(changelog, p) for p in changelog_partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        states: dict[int, dict[str, Any]] = {}
        shown: tuple[int, int, int] | None = None
        shown_at = 0.0
        while True:
            fetched = await consumer.getmany(timeout_ms=1000)
            for records in fetched.values():
                for record in records:
                    follow_changelog(states, record.key, record.value, destination)
            progress = job_progress(states, job_id)
            done, sent, total = progress
            if done >= partitions:
                say(f"{job_id}: done in {done}/{partitions} partition(s): {sent} record(s) sent")
                return 0
            now = time.monotonic()
            if progress != shown and now - shown_at >= PROGRESS_EVERY_S:
                say(
                    f"{job_id}: {done}/{partitions} partition(s) done, {sent}/{total} record(s) "
                    "sent so far"
                )
                shown, shown_at = progress, now
            if now > deadline:
                say(
                    f"{job_id}: not done within the timeout ({done}/{partitions} partitions); "
                    "the workers go on with it"
                )
                return EXIT_TIMEOUT
    finally:
        await consumer.stop()
