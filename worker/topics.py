"""The Kafka topics the worker needs, checked or created before Faust starts.

Run by ``python -m worker run`` and ``check`` alike, with a plain aiokafka
admin client: the input topics must exist and be co-partitioned; the
dead-letter topic, the control topic and the tables' changelog topics are
created when missing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from worker.kafka_client import diagnose_connection, kafka_client_kwargs
from worker.settings import ConfigError, Settings

log = logging.getLogger(__name__)

# The Faust tables, whose changelog topics are "<app_id>-<table>-changelog".
TABLES = ("profiles", "memberships", "activations", "parking")
# Commands are short-lived: kept a week, so that a new app_id on a
# "<app_id>-control" of its own starts with none, and a shared one holds few.
CONTROL_RETENTION_MS = 7 * 24 * 3600 * 1000


# A parked record is a Kinesis record (up to 10 MiB of data and key, a
# stream's MaxRecordSizeInKiB at most) and its headers: over Kafka's default
# message limit (1,000,012 bytes).
PARKED_MESSAGE_BYTES = 11 * 1024 * 1024


@dataclass(frozen=True)
class TopicLayout:
    partitions: int


async def preflight(settings: Settings) -> TopicLayout:
    """Checks the input topics exist and are co-partitioned; creates the dead-letter topic."""
    kafka = settings.kafka
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap_servers,
        request_timeout_ms=15_000,
        **kafka_client_kwargs(kafka),
    )
    try:
        await asyncio.wait_for(admin.start(), 30)
    except Exception as exc:
        # aiokafka says only "Unable to bootstrap"; name the key to fix when we can.
        raise ConfigError(
            await diagnose_connection(kafka)
            or f"kafka.bootstrap_servers: cannot reach Kafka at {kafka.bootstrap_servers} ({exc!r})"
        ) from None
    try:
        return await _check_topics(settings, admin)
    except KafkaError as exc:
        # A login the broker refused silently (OAUTHBEARER) shows up only here.
        cause = await diagnose_connection(kafka)
        raise ConfigError(cause or f"kafka: {exc!r}") from None
    finally:
        await admin.close()


async def _check_topics(settings: Settings, admin: AIOKafkaAdminClient) -> TopicLayout:
    """Input topics exist and are co-partitioned; creates the dead-letter topic."""
    kafka = settings.kafka
    described = await admin.describe_topics([kafka.qualifications_topic, kafka.profiles_topic])
    counts: dict[str, int] = {}
    for entry in described:
        if entry["error_code"] != 0 or not entry["partitions"]:
            key = (
                "kafka.qualifications_topic"
                if entry["topic"] == kafka.qualifications_topic
                else "kafka.profiles_topic"
            )
            raise ConfigError(f"{key}: topic {entry['topic']!r} does not exist")
        counts[entry["topic"]] = len(entry["partitions"])
    q, p = counts[kafka.qualifications_topic], counts[kafka.profiles_topic]
    if q != p:
        raise ConfigError(
            f"kafka.profiles_topic: {kafka.profiles_topic!r} has {p} partitions but "
            f"{kafka.qualifications_topic!r} has {q}; co-partitioned topics need the same count"
        )
    existing = await admin.list_topics()
    if kafka.dlq_topic not in existing:
        await admin.create_topics([NewTopic(kafka.dlq_topic, q, kafka.replication_factor)])
        log.info("created dead-letter topic %s", kafka.dlq_topic)
    await _ensure_control_topic(admin, settings, q, existing)
    await _ensure_parking_topics(admin, settings, q, existing)
    await _ensure_changelogs(admin, settings, q, existing)
    return TopicLayout(partitions=q)


async def _ensure_control_topic(
    admin: Any, settings: Settings, partitions: int, existing: Any
) -> None:
    """The control topic (worker.control), co-partitioned with the inputs."""
    key = "kafka.control_topic" if settings.kafka.control_topic else "app_id"
    config = {"retention.ms": str(CONTROL_RETENTION_MS)}
    await _ensure_copartitioned(
        admin, settings, settings.control_topic, "control topic", key, config, partitions, existing
    )


async def _ensure_parking_topics(
    admin: Any, settings: Settings, partitions: int, existing: Any
) -> None:
    """One parking topic per destination (worker.parking), co-partitioned with the
    inputs; a parked record stays there until its stream took it."""
    config = {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "max.message.bytes": str(PARKED_MESSAGE_BYTES),
    }
    for destination in settings.destinations:
        topic = settings.parking_topic(destination.name)
        what = f"parking topic of {destination.name!r}"
        await _ensure_copartitioned(
            admin, settings, topic, what, "destinations", config, partitions, existing
        )


async def _ensure_copartitioned(
    admin: Any,
    settings: Settings,
    topic: str,
    what: str,
    key: str,
    config: dict[str, str],
    partitions: int,
    existing: Any,
) -> None:
    """Creates ``topic`` with the inputs' partition count, or checks it has it
    (a ConfigError naming ``key`` otherwise)."""
    if topic not in existing:
        await admin.create_topics(
            [NewTopic(topic, partitions, settings.kafka.replication_factor, topic_configs=config)]
        )
        log.info("created %s %s", what, topic)
        return
    (entry,) = await admin.describe_topics([topic])
    if len(entry["partitions"]) != partitions:
        raise ConfigError(
            f"{key}: the {what} {topic!r} has {len(entry['partitions'])} partitions "
            f"but the input topics have {partitions}; it must have as many (delete it and "
            "the worker creates it again)"
        )


async def _ensure_changelogs(
    admin: Any, settings: Settings, partitions: int, existing: Any
) -> None:
    """Creates the tables' changelog topics if missing, and waits until Kafka lists them.

    Faust creates them itself just before its consumer subscribes; on a fresh
    app_id the consumer's first metadata can then miss one (the broker has not
    published it yet). Faust assigns none of its partitions and refuses every
    write to that table ("PartitionsMismatch: ... changelog topic ... has 0
    partitions") until the consumer's next metadata refresh, 5 minutes later,
    and a rebalance meanwhile hangs waiting for the batch it keeps retrying.
    """
    names = [f"{settings.app_id}-{table}-changelog" for table in TABLES]
    missing = [name for name in names if name not in existing]
    if missing:
        compact = {"cleanup.policy": "compact"}
        await admin.create_topics(
            [
                NewTopic(n, partitions, settings.kafka.replication_factor, topic_configs=compact)
                for n in missing
            ]
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        described = await admin.describe_topics(names)
        if all(e["error_code"] == 0 and len(e["partitions"]) == partitions for e in described):
            return
        if loop.time() > deadline:
            raise ConfigError(f"app_id: changelog topics {names} not visible in Kafka after 30s")
        await asyncio.sleep(0.2)
