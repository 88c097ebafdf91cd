"""Shard prediction by MD5 and the per-shard token buckets."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.kinesis import KinesisWriter, PutReply, Record, StreamSummary, WriterConfig
from worker.kinesis._shards import ShardMap, ShardRateLimiter, hash_key

TOP = 2**128 - 1


def even_shards(count: int) -> list[dict[str, Any]]:
    """ListShards entries as Kinesis creates them for a new stream."""
    width = (TOP + 1) // count
    return [
        {
            "ShardId": f"shardId-{i:012d}",
            "HashKeyRange": {
                "StartingHashKey": str(i * width),
                "EndingHashKey": str(TOP if i == count - 1 else (i + 1) * width - 1),
            },
            "SequenceNumberRange": {"StartingSequenceNumber": "1"},
        }
        for i in range(count)
    ]


def test_hash_key_is_the_md5_as_a_128_bit_integer() -> None:
    assert hash_key("p-1") == int(hashlib.md5(b"p-1").hexdigest(), 16)


@given(st.text(min_size=1, max_size=256), st.integers(min_value=1, max_value=16))
def test_every_key_lands_in_the_shard_whose_range_holds_its_hash(key: str, count: int) -> None:
    shards = even_shards(count)
    found = ShardMap.from_list_shards(shards).shard_for(key)
    value = hash_key(key)
    expected = [
        s["ShardId"]
        for s in shards
        if int(s["HashKeyRange"]["StartingHashKey"])
        <= value
        <= int(s["HashKeyRange"]["EndingHashKey"])
    ]
    assert [found] == expected


def test_closed_shards_are_ignored() -> None:
    shards = even_shards(2)
    parent = {
        "ShardId": "shardId-old",
        "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str(TOP)},
        "SequenceNumberRange": {"StartingSequenceNumber": "1", "EndingSequenceNumber": "9"},
    }
    mapping = ShardMap.from_list_shards([parent, *shards])
    assert len(mapping) == 2
    assert mapping.shard_for("anything") in {"shardId-000000000000", "shardId-000000000001"}


def test_bucket_gives_a_second_of_burst_then_refills() -> None:
    limiter = ShardRateLimiter(records_per_s=10, bytes_per_s=0)
    assert sum(limiter.try_take("s", 100, now=0.0) for _ in range(20)) == 10
    assert limiter.wait_time("s", 100, now=0.0) == pytest.approx(0.1)
    assert limiter.try_take("s", 100, now=0.05) is False
    assert limiter.try_take("s", 100, now=0.1) is True
    assert limiter.try_take("other", 100, now=0.1) is True, "shards have their own buckets"


def test_bytes_limit_and_records_larger_than_a_second() -> None:
    limiter = ShardRateLimiter(records_per_s=0, bytes_per_s=1000)
    assert limiter.try_take("s", 600, now=0.0)
    assert not limiter.try_take("s", 600, now=0.0)
    assert limiter.wait_time("s", 600, now=0.0) == pytest.approx(0.2)
    # Bigger than the whole budget: goes once the bucket is full again.
    assert not limiter.try_take("s", 5000, now=0.0)
    assert limiter.try_take("s", 5000, now=0.6)


def test_no_limits_and_unknown_shard_always_pass() -> None:
    assert all(ShardRateLimiter(0, 0).try_take("s", 10**9, now=0.0) for _ in range(10_000))
    assert ShardRateLimiter(1, 1).try_take(None, 10, now=0.0)


class TimedTransport:
    """Accepts everything; notes when each record reached which shard."""

    def __init__(self, shards: list[dict[str, Any]]) -> None:
        self.shards = shards
        self.mapping = ShardMap.from_list_shards(shards)
        self.arrivals: dict[str, list[float]] = defaultdict(list)

    async def put_records(
        self, stream: str, records: Sequence[tuple[bytes, str]]
    ) -> list[PutReply]:
        now = time.monotonic()
        for _, key in records:
            self.arrivals[self.mapping.shard_for(key) or "?"].append(now)
        return [PutReply() for _ in records]

    async def describe_stream(self, stream: str) -> StreamSummary:
        return StreamSummary("ACTIVE", len(self.shards), 1024 * 1024)

    async def list_shards(self, stream: str) -> list[dict[str, Any]]:
        return self.shards

    async def close(self) -> None:
        pass


async def test_writer_keeps_each_shard_within_its_record_rate() -> None:
    transport = TimedTransport(even_shards(2))
    writer = KinesisWriter("s", transport, WriterConfig(shard_records_per_s=200))
    await writer.start()
    records = [Record(b"x", f"key-{i}") for i in range(900)]
    outcomes = await writer.put_all(records)
    assert all(o.accepted for o in outcomes)
    for arrivals in transport.arrivals.values():
        start = arrivals[0]
        for i, at in enumerate(arrivals):
            # One second of burst, then the rate: never ahead of the bucket (the
            # bucket starts a few ms before the first arrival is timed: 20 ms slack).
            allowed = 200 + 200 * (at - start + 0.02) + 1
            assert i + 1 <= allowed, (i, at - start)


async def test_writer_without_a_shard_map_does_not_limit() -> None:
    transport = TimedTransport([])
    writer = KinesisWriter("s", transport, WriterConfig(shard_records_per_s=1))
    await writer.start()
    started = time.monotonic()
    outcomes = await asyncio.wait_for(
        writer.put_all([Record(b"x", f"k{i}") for i in range(100)]), timeout=5
    )
    assert all(o.accepted for o in outcomes)
    assert time.monotonic() - started < 5
