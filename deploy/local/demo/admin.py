"""The demo's Kafka topics and Kinesis streams: created fresh for a run, deleted after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import boto3
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from reference import Config

from .config import AWS, PARTITIONS, SHARDS, say


@asynccontextmanager
async def kafka_admin(bootstrap: str) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


def demo_topic(config: Config, name: str) -> bool:
    """The demo's own topics: its inputs, its dead-letter topic, its app's internal topics."""
    return name in config.topics or name.startswith(f"{config.app_id}-")


async def delete_topics(admin: Any, config: Config) -> list[str]:
    doomed = sorted(t for t in await admin.list_topics() if demo_topic(config, t))
    if doomed:
        await admin.delete_topics(doomed)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [t for t in await admin.list_topics() if t in doomed]
        if not left:
            return doomed
        await asyncio.sleep(0.2)
    raise RuntimeError(f"topics still there 30 s after deletion: {left}")


async def prepare_topics(bootstrap: str, config: Config) -> None:
    async with kafka_admin(bootstrap) as admin:
        deleted = await delete_topics(admin, config)
        if deleted:
            say(f"deleted topics left by an earlier run: {', '.join(deleted)}")
        deadline = time.monotonic() + 30
        while True:  # a just-deleted topic can stay "marked for deletion" for a moment
            response = await admin.create_topics(
                [NewTopic(t, PARTITIONS, 1) for t in config.topics]
            )
            errors = [
                (t[0], t[1]) for t in response.topic_errors if t[1] not in (0, 36)
            ]  # 36: already exists (created by the previous attempt)
            if not errors:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot create topics: {errors}")
            await asyncio.sleep(0.5)
        while True:
            described = await admin.describe_topics(config.topics)
            if all(
                d["error_code"] == 0
                and len(d["partitions"]) == PARTITIONS
                and all(p["leader"] >= 0 for p in d["partitions"])
                for d in described
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics not ready: {described}")
            await asyncio.sleep(0.2)
    say(f"created topics {', '.join(config.topics)} ({PARTITIONS} partitions each)")


async def drop_topics(bootstrap: str, config: Config) -> list[str]:
    async with kafka_admin(bootstrap) as admin:
        return await delete_topics(admin, config)


def kinesis_client(endpoint: str) -> Any:
    return boto3.client("kinesis", endpoint_url=endpoint, **AWS)


def stream_exists(kinesis: Any, stream: str) -> bool:
    try:
        kinesis.describe_stream_summary(StreamName=stream)
    except kinesis.exceptions.ResourceNotFoundException:
        return False
    return True


def delete_streams(kinesis: Any, config: Config) -> list[str]:
    doomed = [d.stream for d in config.destinations if stream_exists(kinesis, d.stream)]
    for stream in doomed:
        kinesis.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)
    deadline = time.monotonic() + 30
    while [stream for stream in doomed if stream_exists(kinesis, stream)]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"streams still there 30 s after deletion: {doomed}")
        time.sleep(0.2)
    return doomed


def prepare_streams(kinesis: Any, config: Config) -> None:
    deleted = delete_streams(kinesis, config)
    if deleted:
        say(f"deleted streams left by an earlier run: {', '.join(deleted)}")
    for destination in config.destinations:
        kinesis.create_stream(StreamName=destination.stream, ShardCount=SHARDS)
    deadline = time.monotonic() + 60
    for destination in config.destinations:
        while True:
            summary = kinesis.describe_stream_summary(StreamName=destination.stream)
            if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream {destination.stream} not ACTIVE after 60 s")
            time.sleep(0.2)
    streams = ", ".join(d.stream for d in config.destinations)
    say(f"created streams {streams} ({SHARDS} shards each), ACTIVE")
