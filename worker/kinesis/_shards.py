"""Which shard a record goes to, and how much each shard may take per second.

Kinesis maps a partition key to a shard by the MD5 of the key, read as a
128-bit integer, against each open shard's hash key range. Knowing that, the
writer can keep every shard within its write limit (1,000 records/s and
1 MiB/s on provisioned streams) instead of sending what would only come back
throttled.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def hash_key(partition_key: str) -> int:
    return int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big")


class ShardMap:
    """Open shards by hash key range; built from ListShards replies."""

    def __init__(self, shards: Iterable[tuple[str, int, int]]) -> None:
        ordered = sorted(shards, key=lambda shard: shard[1])
        self._starts = [start for _, start, _ in ordered]
        self._shards = ordered

    @classmethod
    def from_list_shards(cls, shards: Iterable[Mapping[str, Any]]) -> ShardMap:
        # A closed shard (after a split or merge) has an ending sequence number.
        return cls(
            (
                shard["ShardId"],
                int(shard["HashKeyRange"]["StartingHashKey"]),
                int(shard["HashKeyRange"]["EndingHashKey"]),
            )
            for shard in shards
            if "EndingSequenceNumber" not in shard.get("SequenceNumberRange", {})
        )

    def __len__(self) -> int:
        return len(self._shards)

    def shard_for(self, partition_key: str) -> str | None:
        value = hash_key(partition_key)
        index = bisect.bisect_right(self._starts, value) - 1
        if index < 0:
            return None
        shard_id, _, end = self._shards[index]
        return shard_id if value <= end else None


@dataclass(slots=True)
class _Bucket:
    records: float
    bytes: float
    updated: float


class ShardRateLimiter:
    """A token bucket per shard for records and bytes; a limit of 0 means none."""

    def __init__(self, records_per_s: int, bytes_per_s: int) -> None:
        self.records_per_s = records_per_s
        self.bytes_per_s = bytes_per_s
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, shard: str, now: float) -> _Bucket:
        bucket = self._buckets.get(shard)
        if bucket is None:
            bucket = self._buckets[shard] = _Bucket(
                float(self.records_per_s), float(self.bytes_per_s), now
            )
            return bucket
        elapsed = max(0.0, now - bucket.updated)
        bucket.records = min(
            float(self.records_per_s), bucket.records + elapsed * self.records_per_s
        )
        bucket.bytes = min(float(self.bytes_per_s), bucket.bytes + elapsed * self.bytes_per_s)
        bucket.updated = now
        return bucket

    def try_take(self, shard: str | None, size: int, now: float) -> bool:
        """Takes room for one record of ``size`` bytes if the shard has it now."""
        if shard is None:
            return True
        bucket = self._bucket(shard, now)
        if self.records_per_s and bucket.records < 1:
            return False
        # A record bigger than a full second's budget goes when the bucket is full.
        needed = min(size, self.bytes_per_s)
        if self.bytes_per_s and bucket.bytes < needed:
            return False
        if self.records_per_s:
            bucket.records -= 1
        if self.bytes_per_s:
            bucket.bytes -= needed
        return True

    def wait_time(self, shard: str | None, size: int, now: float) -> float:
        """Seconds until the shard has room for one record of ``size`` bytes."""
        if shard is None:
            return 0.0
        bucket = self._bucket(shard, now)
        wait = 0.0
        if self.records_per_s and bucket.records < 1:
            wait = (1 - bucket.records) / self.records_per_s
        needed = min(size, self.bytes_per_s)
        if self.bytes_per_s and bucket.bytes < needed:
            wait = max(wait, (needed - bucket.bytes) / self.bytes_per_s)
        return wait
