"""What the worker did, read back: its metrics, the streams and the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from .admin import kafka_admin
from .config import BASE_URL, Json


@dataclass(frozen=True)
class Metrics:
    events: float
    exports: float
    series: dict[str, float]


async def read_metrics(session: aiohttp.ClientSession) -> Metrics:
    async with session.get(f"{BASE_URL}/metrics") as reply:
        text = await reply.text()
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kd_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)

    def total(metric: str) -> float:
        return sum(v for k, v in series.items() if k.startswith(metric + "{"))

    return Metrics(total("kd_events_total"), total("kd_exports_total"), series)


@dataclass(frozen=True)
class Received:
    destination: int
    partition_key: str
    data: Json


def read_stream(kinesis: Any, index: int, stream: str) -> list[Received]:
    records: list[Received] = []
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    for shard in shards:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            reply = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            for record in reply["Records"]:
                data = json.loads(record["Data"])
                records.append(Received(index, record["PartitionKey"], data))
            if not reply["Records"]:
                break
            iterator = reply.get("NextShardIterator")
    return records


async def read_dead_letters(bootstrap: str, topic: str, expect: int) -> list[Json]:
    async with kafka_admin(bootstrap) as admin:
        described = await admin.describe_topics([topic])
    partitions = [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]
    letters: list[Json] = []
    if not partitions:
        return letters
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        # A batch's dead letters are written after its records were put: the last
        # few may still be on their way when the counters say "done".
        patience = time.monotonic() + 10
        while True:
            ends: dict[Any, int] = await consumer.end_offsets(partitions)
            deadline = time.monotonic() + 30
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                if time.monotonic() > deadline:
                    raise RuntimeError("could not read the dead-letter topic to its end in 30 s")
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    letters.extend(json.loads(m.value) for m in messages)
            if len(letters) >= expect or time.monotonic() > patience:
                return letters
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
