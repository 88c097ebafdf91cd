"""worker.faust.tables: a batch's table writes equal Faust's own, and their
changelog is durable (or still pending) when ``flush`` returns.

Faust's own writes are captured at ``Producer.send_soon`` (what
``Table.__setitem__``/``pop`` hand to its producer buffer); ours at aiokafka's
``send_batch``, with aiokafka's real ``BatchBuilder``.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from faust.types import TP

from worker.faust.tables import FaustTables, event_scope

PARTITIONS = 4


def app_and_tables() -> tuple[Any, Any, Any]:
    app = faust.App("t-tables", broker="kafka://127.0.0.1:1", store="memory://")
    profiles = app.Table("profiles", partitions=PARTITIONS, key_type=str)
    memberships = app.Table("memberships", partitions=PARTITIONS, key_type=str)
    return app, profiles, memberships


class Event:
    """What the tables read of Faust's event: its message's partition (weakly referenced)."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(topic="in", partition=partition)


def event(partition: int) -> Any:
    return Event(partition)


class Producer:
    """aiokafka's producer as FaustTables uses it; each batch's future is
    resolved (or failed) by the test."""

    def __init__(self, batch_size: int = 16384) -> None:
        self.batch_size = batch_size
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes | None]]]] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.fail: set[int] = set()  # indexes of sent batches that Kafka refuses

    def _ensure_producer(self) -> Producer:
        return self

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(batch_size=self.batch_size, compression_type=0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        records = DefaultRecordBatch(bytes(batch._build()))
        messages = [(r.key, r.value) for r in records]
        index = len(self.sent)
        self.sent.append((topic, partition, messages))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if index in self.fail:
            future.set_exception(RuntimeError("refused"))
        else:
            base = self.offsets.get((topic, partition), 0)
            self.offsets[topic, partition] = base + len(messages)
            future.set_result(SimpleNamespace(offset=base))
        self.futures.append(future)
        return future


def profile(index: int) -> dict[str, Any]:
    return {"attributes": {"n": index}, "identityMap": None}


WRITES: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("profiles", "p-1", {"attributes": {"a": "é"}, "identityMap": None}, 0),
    ("memberships", "p-1", {"s1": {"m": True, "t": "2026-01-01T00:00:00Z"}}, 0),
    ("profiles", "p-2", {"attributes": {}, "identityMap": {"email": [{"id": "x"}]}}, 3),
    ("profiles", "p-1", None, 0),  # a delete: a tombstone
    ("profiles", "p-9", None, 1),  # a delete of a key never written: nothing
    ("memberships", "p-3", {"s2": {"m": False, "t": "2026-01-02T00:00:00Z"}}, 2),
]


def faust_writes() -> tuple[dict[str, dict[str, Any]], list[tuple[str, int, Any, Any]]]:
    app, profiles, memberships = app_and_tables()
    tables = {"profiles": profiles, "memberships": memberships}
    captured: list[tuple[str, int, Any, Any]] = []
    app.producer.send_soon = lambda fut: captured.append(
        (
            fut.message.channel.get_topic_name(),
            fut.message.partition,
            fut.message.key,
            fut.message.value,
        )
    )
    for name, key, value, partition in WRITES:
        with event_scope(event(partition)):
            if value is None:
                tables[name].pop(key, None)
            else:
                tables[name][key] = value
    return {name: dict(t.data) for name, t in tables.items()}, captured


async def test_writes_and_changelog_messages_are_faust_s_own() -> None:
    expected_data, expected_messages = faust_writes()
    _, profiles, memberships = app_and_tables()
    producer = Producer()
    tables = FaustTables(profiles, memberships, producer)
    for name, key, value, partition in WRITES:
        put = tables.put_profile if name == "profiles" else tables.put_memberships
        put(key, value, event(partition))
    await tables.flush()

    assert {"profiles": dict(profiles.data), "memberships": dict(memberships.data)} == expected_data
    ours = [(t, p, k, v) for t, p, messages in producer.sent for k, v in messages]
    # Per partition in the same order (partitions are sent one after another).
    for tp in {(t, p) for t, p, _, _ in expected_messages}:
        assert [m for m in ours if m[:2] == tp] == [m for m in expected_messages if m[:2] == tp]
    assert len(ours) == len(expected_messages)
    assert tables.get_profile("p-2", event(3)) == WRITES[2][2]
    assert tables.get_memberships("p-1", event(0)) == WRITES[1][2]


async def test_flush_persists_the_last_offset_of_each_partition() -> None:
    _, profiles, memberships = app_and_tables()
    persisted: dict[Any, int] = {}
    profiles.data.set_persisted_offset = lambda tp, offset: persisted.__setitem__(tp, offset)
    producer = Producer(batch_size=120)  # a few messages per batch
    tables = FaustTables(profiles, memberships, producer)
    for index in range(10):
        tables.put_profile(
            f"p-{index}", {"attributes": {"n": index}, "identityMap": None}, event(1)
        )
    await tables.flush()
    assert len(producer.sent) > 1, "the batch was meant to be split"
    assert sum(len(m) for _, _, m in producer.sent) == 10
    (tp,) = persisted
    assert (tp.topic, tp.partition, persisted[tp]) == (
        profiles.changelog_topic.get_topic_name(),
        1,
        9,
    )
    await tables.flush()  # nothing pending: nothing sent
    assert sum(len(m) for _, _, m in producer.sent) == 10


async def test_a_refused_batch_is_sent_again_with_everything_after_it() -> None:
    _, profiles, memberships = app_and_tables()
    producer = Producer(batch_size=120)
    producer.fail = {1}
    tables = FaustTables(profiles, memberships, producer)
    for index in range(10):
        tables.put_profile(
            f"p-{index}", {"attributes": {"n": index}, "identityMap": None}, event(1)
        )
    tables.put_memberships("p-0", {}, event(2))
    with pytest.raises(RuntimeError, match="refused"):
        await tables.flush()
    first_try = list(producer.sent)
    keys_sent = [k for _, p, m in first_try if p == 1 for k, _ in m]
    refused_from = sum(len(m) for _, _, m in first_try[:1])
    producer.fail = set()
    await tables.flush()
    again = [k for _, p, m in producer.sent[len(first_try) :] for k, _ in m]
    # From the first refused message of partition 1 on, in order; partition 2 was acknowledged.
    assert again == keys_sent[refused_from:]
    await tables.flush()
    assert len(producer.sent) == len(first_try) + len(producer.sent[len(first_try) :])


async def test_a_failure_before_sending_keeps_everything() -> None:
    _, profiles, memberships = app_and_tables()

    class NotStarted:
        def _ensure_producer(self) -> Any:
            raise RuntimeError("producer not started")

    tables = FaustTables(profiles, memberships, NotStarted())
    tables.put_profile("p-1", {"attributes": {}, "identityMap": None}, event(0))
    with pytest.raises(RuntimeError, match="not started"):
        await tables.flush()
    producer = Producer()
    tables._producer = producer
    await tables.flush()
    assert [k for _, _, m in producer.sent for k, _ in m] == [b'"p-1"']


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
async def test_stored_memberships_lists_a_partition_s_profiles(store: str, tmp_path: Any) -> None:
    """What worker.backfill walks: written here, recovered from the changelog
    (memory), deleted; per partition, never another partition's."""
    app = faust.App("t-members", broker="kafka://127.0.0.1:1", store=store, datadir=str(tmp_path))
    profiles = app.Table("profiles", partitions=PARTITIONS, key_type=str)
    memberships: Any = app.Table("memberships", partitions=PARTITIONS, key_type=str)
    tables = FaustTables(profiles, memberships, Producer())
    for key, partition in [("a", 0), ("b", 1), ("c", 1), ("d", 1)]:
        tables.put_memberships(key, {"s": [True, 0]}, event(partition))
    tables.put_memberships("d", None, event(1))
    if store == "memory://":
        # Recovered from the changelog: the memory store records the partition itself.
        memberships.data.data["r"] = {"s": [True, 0]}
        memberships.data._key_partition["r"] = 1
        memberships.data._key_partition["gone"] = 1  # deleted since: not held
        # Written here, then the partition revoked: Faust's purge after the next
        # recovery drops these keys too, since the writes recorded their partition.
        await memberships.data.on_recovery_completed({TP("in", 1)}, set())
        assert set(memberships.data.data) == {"b", "c", "r"}
    expected = {"b", "c", "r"} if store == "memory://" else {"b", "c"}
    found = tables.stored_memberships([0, 1, 3])
    assert {key for key, _ in found[1]} == expected
    assert all(value == {"s": [True, 0]} for _, value in found[1])
    assert found[0] == ([] if store == "memory://" else [("a", {"s": [True, 0]})])
    assert found[3] == []


async def test_activations_are_keyed_by_partition_and_destination() -> None:
    app, profiles, memberships = app_and_tables()
    activations = app.Table("activations", partitions=PARTITIONS, key_type=str)
    producer = Producer()
    tables = FaustTables(profiles, memberships, producer, activations)
    tables.put_activation("Dest/One", {"active": ["s"]}, 2)
    tables.put_activation("Dest/One", {"active": ["t"]}, 3)
    assert tables.get_activation("Dest/One", 2) == {"active": ["s"]}
    assert tables.get_activation("Dest/One", 3) == {"active": ["t"]}
    assert tables.get_activation("Dest/One", 0) is None
    await tables.flush()
    [(topic, partition, [(key, _)]), (_, other, _)] = sorted(producer.sent)[:2]
    assert (topic, partition, key) == ("t-tables-activations-changelog", 2, b'"2/Dest/One"')
    assert other == 3
