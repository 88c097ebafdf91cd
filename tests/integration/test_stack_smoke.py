"""The local stack is real: a Kafka broker and a Kinesis endpoint over the network."""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.support import Stack, StreamFactory, TopicFactory


async def _consume(stack: Stack, topic: str, group: str, expected: int) -> list[tuple[int, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[tuple[int, bytes]] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    got.extend((m.partition, m.value or b"") for m in messages)
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_produce_and_consume_with_a_consumer_group(
    stack: Stack, kafka_topic: TopicFactory, unique_name: str
) -> None:
    topic = kafka_topic(unique_name, partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(300):
            await producer.send(topic, key=f"p-{i % 17}".encode(), value=f"{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    first = await _consume(stack, topic, unique_name, 300)
    assert sorted(int(v) for _, v in first) == list(range(300))
    assert {p for p, _ in first} == {0, 1, 2}, "keys spread over all partitions"

    # Same key, same partition: the property the worker's co-partitioning rests on.
    by_key: dict[str, set[int]] = defaultdict(set)
    for partition, value in first:
        by_key[f"p-{int(value) % 17}"].add(partition)
    assert all(len(parts) == 1 for parts in by_key.values())

    # The group committed: a new member of the same group starts after it.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=stack.kafka_bootstrap, group_id=unique_name
    )
    await consumer.start()
    try:
        committed = [await consumer.committed(TopicPartition(topic, p)) for p in range(3)]
    finally:
        await consumer.stop()
    assert sum(c or 0 for c in committed) == 300


def test_put_records_and_read_back_every_shard(
    stack: Stack, kinesis_stream: StreamFactory, unique_name: str
) -> None:
    stream = kinesis_stream(unique_name, shards=3)
    client = stack.kinesis()
    records: list[dict[str, Any]] = [
        {"Data": f"record-{i}".encode(), "PartitionKey": f"key-{i % 25}"} for i in range(200)
    ]
    for start in range(0, len(records), 100):
        reply = client.put_records(StreamName=stream, Records=records[start : start + 100])
        assert reply["FailedRecordCount"] == 0

    shards = client.list_shards(StreamName=stream)["Shards"]
    assert len(shards) == 3
    read: list[tuple[str, bytes]] = []
    for shard in shards:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=1000)
            read.extend((shard["ShardId"], r["Data"]) for r in page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
        # Each record sits in the shard whose hash key range holds the MD5 of its key.
        low, high = (int(shard["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
        for shard_id, data in read:
            if shard_id != shard["ShardId"]:
                continue
            key = f"key-{int(data.decode().split('-')[1]) % 25}"
            assert low <= int(hashlib.md5(key.encode()).hexdigest(), 16) <= high

    assert sorted(data for _, data in read) == sorted(r["Data"] for r in records)
    # Per key, records come back in the order they were put.
    order: dict[str, list[int]] = defaultdict(list)
    for _, data in read:
        i = int(data.decode().split("-")[1])
        order[f"key-{i % 25}"].append(i)
    assert all(seq == sorted(seq) for seq in order.values())


def test_concurrent_puts_to_one_shard_keep_every_record(
    stack: Stack, kinesis_stream: StreamFactory, unique_name: str
) -> None:
    """The local endpoint must not lose records under concurrent PutRecords (as moto 5.2 does)."""
    stream = kinesis_stream(unique_name, shards=1)

    def put(worker: int) -> None:
        client = stack.kinesis()
        for call in range(25):
            records = [
                {"Data": f"{worker}-{call}-{i}".encode(), "PartitionKey": f"k{worker}"}
                for i in range(20)
            ]
            assert client.put_records(StreamName=stream, Records=records)["FailedRecordCount"] == 0

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(8)))

    client = stack.kinesis()
    shard = client.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    iterator = client.get_shard_iterator(
        StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    data: list[bytes] = []
    while iterator:
        page = client.get_records(ShardIterator=iterator, Limit=10_000)
        data.extend(r["Data"] for r in page["Records"])
        if not page["Records"]:
            break
        iterator = page["NextShardIterator"]
    assert len(data) == len(set(data)) == 8 * 25 * 20
