"""One-shot set-up of the compose stack (deploy/compose.yaml): topics and stream.

Creates the two co-partitioned input topics and the Kinesis data stream the
workers of the stack write to, then exits 0. Safe to run again: what exists is
checked and kept. It fails (exit 1) when an existing input topic has another
partition count than asked, since the worker refuses topics that are not
co-partitioned. It runs in the worker image, which has aiokafka and boto3.

Settings (environment; the defaults are the stack's):

    INIT_KAFKA_BOOTSTRAP      kafka:9092
    INIT_TOPICS               segment-qualifications,profile-updates
    INIT_PARTITIONS           8
    INIT_REPLICATION          1
    INIT_KINESIS_ENDPOINT     http://kinesis:5000
    INIT_STREAMS              aep-export      (comma-separated)
    INIT_SHARDS               2
    INIT_TIMEOUT_S            120
    AWS_REGION / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   for the endpoint

No KD_ variable is used: those are the worker's configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import boto3
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


@dataclass(frozen=True)
class InitSettings:
    kafka_bootstrap: str
    topics: list[str]
    partitions: int
    replication: int
    kinesis_endpoint: str
    streams: list[str]
    shards: int
    region: str
    timeout_s: float

    @classmethod
    def from_env(cls, environ: dict[str, str]) -> InitSettings:
        def get(name: str, default: str) -> str:
            return environ.get(name, "").strip() or default

        def names(name: str, default: str) -> list[str]:
            return [part.strip() for part in get(name, default).split(",") if part.strip()]

        return cls(
            kafka_bootstrap=get("INIT_KAFKA_BOOTSTRAP", "kafka:9092"),
            topics=names("INIT_TOPICS", "segment-qualifications,profile-updates"),
            partitions=int(get("INIT_PARTITIONS", "8")),
            replication=int(get("INIT_REPLICATION", "1")),
            kinesis_endpoint=get("INIT_KINESIS_ENDPOINT", "http://kinesis:5000"),
            streams=names("INIT_STREAMS", "aep-export"),
            shards=int(get("INIT_SHARDS", "2")),
            region=get("AWS_REGION", get("AWS_DEFAULT_REGION", "us-east-1")),
            timeout_s=float(get("INIT_TIMEOUT_S", "120")),
        )


class InitError(Exception):
    pass


def say(message: str) -> None:
    print(f"init: {message}", flush=True)


async def ensure_topics(settings: InitSettings) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15_000
    )
    deadline = time.monotonic() + settings.timeout_s
    while True:
        try:
            await admin.start()
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                raise InitError(
                    f"Kafka not reachable at {settings.kafka_bootstrap}: {exc!r}"
                ) from None
            say(f"waiting for Kafka at {settings.kafka_bootstrap} ({exc!r})")
            await asyncio.sleep(2)
    try:
        existing = set(await admin.list_topics())
        missing = [topic for topic in settings.topics if topic not in existing]
        if missing:
            # Created concurrently meanwhile: checked below like the others.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(t, settings.partitions, settings.replication) for t in missing]
                )
            say(f"created topics {', '.join(missing)} ({settings.partitions} partitions)")
        for entry in await admin.describe_topics(settings.topics):
            count = len(entry["partitions"] or [])
            if entry["error_code"] != 0 or count == 0:
                raise InitError(f"topic {entry['topic']!r} could not be created or described")
            if count != settings.partitions:
                raise InitError(
                    f"topic {entry['topic']!r} has {count} partitions, not "
                    f"{settings.partitions}: the input topics must be co-partitioned; "
                    "delete it or set INIT_PARTITIONS"
                )
            say(f"topic {entry['topic']} ok ({count} partitions)")
    finally:
        await admin.close()


def ensure_streams(settings: InitSettings, client: Any) -> None:
    existing = set(client.list_streams().get("StreamNames", []))
    for stream in settings.streams:
        if stream not in existing:
            client.create_stream(StreamName=stream, ShardCount=settings.shards)
            say(f"created stream {stream} ({settings.shards} shards)")
        deadline = time.monotonic() + settings.timeout_s
        while True:
            summary = client.describe_stream_summary(StreamName=stream)
            status = summary["StreamDescriptionSummary"]["StreamStatus"]
            if status == "ACTIVE":
                say(f"stream {stream} ok (ACTIVE)")
                break
            if time.monotonic() > deadline:
                raise InitError(f"stream {stream} is still {status} after {settings.timeout_s}s")
            time.sleep(1)


def main() -> int:
    settings = InitSettings.from_env(dict(os.environ))
    try:
        asyncio.run(ensure_topics(settings))
        client = boto3.client(
            "kinesis", endpoint_url=settings.kinesis_endpoint, region_name=settings.region
        )
        ensure_streams(settings, client)
    except InitError as exc:
        print(f"init: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # botocore / aiokafka errors: say what failed, no traceback
        print(f"init: error: {exc!r}", file=sys.stderr)
        return 1
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
