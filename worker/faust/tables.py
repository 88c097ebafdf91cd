"""The pipeline's state tables on Faust tables, with the changelog written a batch at a time.

Faust writes a table's changelog one message at a time: ``Table.__setitem__``
-> ``send_changelog`` -> a ``FutureMessage`` in the ``ProducerBuffer`` -> a
task that awaits ``Topic.publish_message`` -> ``AIOKafkaProducer.send``, with
sensors and callbacks per message; it drops the future (its producer flush
gives up after 0.1 s with writes queued), so nothing tells when a write is
durable. Here a batch's writes go to the table's store at once (as
``__setitem__`` does after its changelog call) and are collected per
changelog partition; ``flush`` sends each partition's messages as aiokafka
``BatchBuilder``s (``send_batch``) and returns once Kafka acknowledged them.
The offsets of a batch must not be committed before its state is durable: a
restart would find stale state and drop exports (a lost "exited" in the kill
test).

What is kept the same as Faust: the bytes (the table's serializers' codecs,
which is what the changelog topic's ``prepare_key``/``prepare_value`` use for
a str key and a dict value; tombstones as in ``Table.on_key_del``), the
partition (the event's, as ``Table.partition_for_key``), and the persisted
offset RocksDB recovers from (``Table._on_changelog_sent``:
``set_persisted_offset`` with the last offset written). Skipped: Faust's
table sensors and key TTLs (windowed tables only).

``faust.streams._current_event``: Faust picks the RocksDB partition store from
the current event and has no public way to choose it. Tables here are written
after a whole batch, so each key is written in the scope of the last event that
touched it: same profile id, same partition number.

Proved by tests/unit/test_faust_tables.py (the bytes and order of Faust's own
writes, persisted offsets, resending from the first refusal) and, end to end,
tests/integration/test_pipeline.py::test_killing_the_worker_loses_nothing and
::test_restart_recovers_state (memory and RocksDB).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka.structs import TopicPartition
from faust.serializers import codecs
from faust.streams import _current_event

from worker.activation import activation_key


@contextmanager
def event_scope(event: Any) -> Iterator[None]:
    """Makes ``event`` Faust's current event while tables are touched."""
    token = _current_event.set(weakref.ref(event) if event is not None else None)
    try:
        yield
    finally:
        _current_event.reset(token)


@dataclass(slots=True)
class _Changes:
    """Changelog messages of one table partition not yet acknowledged, in order."""

    table: Any
    messages: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)


class PartitionScope:
    """An event stand-in naming only a partition: what tables need to be read and
    written outside of any event (worker.backfill, between batches)."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, partition: int) -> None:
        self.message = _PartitionOnly(partition)


@dataclass(frozen=True, slots=True)
class _PartitionOnly:
    partition: int


class FaustTables:
    """The pipeline's StateTables on two Faust tables keyed by profile id, and
    the activations and parking tables keyed "<partition>/<destination>"
    (worker.backfill, worker.parking)."""

    def __init__(
        self,
        profiles: Any,
        memberships: Any,
        producer: Any,
        activations: Any = None,
        parking: Any = None,
    ) -> None:
        self.profiles = profiles
        self.memberships = memberships
        self.activations = activations
        self.parking = parking
        self._producer = producer  # Faust's Producer; its aiokafka producer once started
        self._pending: dict[TopicPartition, _Changes] = {}
        # What Faust's Registry.dumps_key/dumps_value come down to for a str key
        # and a dict value with the table's serializers: the codecs' dumps.
        self._codecs = {
            id(table): (
                table.changelog_topic.get_topic_name(),
                codecs.get_codec(table.key_serializer).dumps,
                codecs.get_codec(table.value_serializer).dumps,
            )
            for table in (profiles, memberships, activations, parking)
            if table is not None
        }

    async def flush(self) -> None:
        """Returns once Kafka acknowledged every changelog write made so far.

        What Kafka refused stays pending, from a partition's first refused
        message on (a later message of the same key must not land before it),
        and the error is raised: the batch is retried, its retry finds the
        tables already holding the new values (so it writes nothing itself)
        and sends these again.
        """
        if not self._pending:
            return
        # (partition, first message, end, future) per record batch sent, in order
        sent: list[tuple[TopicPartition, int, int, asyncio.Future[Any]]] = []
        failure: BaseException | None = None
        try:
            producer = self._producer._ensure_producer()  # AIOKafkaProducer
            for tp, changes in self._pending.items():
                start = 0
                while start < len(changes.messages):
                    batch, end = producer.create_batch(), start
                    for key, value in changes.messages[start:]:
                        if batch.append(timestamp=None, key=key, value=value) is None:
                            break  # full (the first message always fits)
                        end += 1
                    future = await producer.send_batch(batch, tp.topic, partition=tp.partition)
                    sent.append((tp, start, end, future))
                    start = end
        except Exception as exc:  # what was sent is still awaited below
            failure = exc
        results = await asyncio.gather(*(future for *_, future in sent), return_exceptions=True)
        acknowledged: dict[TopicPartition, int] = {}  # messages done from the start
        refused: set[TopicPartition] = set()  # nothing counts past a refusal
        for (tp, start, end, _), result in zip(sent, results, strict=True):
            if tp in refused:
                continue
            if isinstance(result, BaseException):
                failure = failure or result
                refused.add(tp)
                continue
            acknowledged[tp] = end
            # The offset Faust's own send callback would persist for RocksDB:
            # the last message's; the batch's offsets are consecutive.
            self._pending[tp].table.data.set_persisted_offset(tp, result.offset + end - start - 1)
        for tp, end in acknowledged.items():
            changes = self._pending[tp]
            del changes.messages[:end]
            if not changes.messages:
                del self._pending[tp]
        if failure is not None:
            raise failure

    def get_profile(self, profile_id: str, scope: Any) -> dict[str, Any] | None:
        with event_scope(scope):
            value: dict[str, Any] | None = self.profiles.data.get(profile_id)
            return value

    def get_memberships(self, profile_id: str, scope: Any) -> dict[str, Any] | None:
        with event_scope(scope):
            value: dict[str, Any] | None = self.memberships.data.get(profile_id)
            return value

    def stored_memberships(
        self, partitions: Collection[int]
    ) -> dict[int, list[tuple[str, dict[str, Any]]]]:
        """(profile id, stored memberships) of every profile the memberships table
        holds in each of ``partitions``: read from the store directly, in one pass
        (a listing reads every profile of a partition)."""
        store = self.memberships.data
        found: dict[int, list[tuple[str, dict[str, Any]]]] = {p: [] for p in partitions}
        if hasattr(store, "_dbs"):  # RocksDB: one database per partition
            for partition in partitions:
                db = store._dbs.get(partition)  # never opened here: Faust opens its own
                if db is None:
                    continue
                found[partition] = [
                    (store._decode_key(key), store._decode_value(value))
                    for key, value in store._visible_items(db)
                ]
            return found
        held = store.data  # the memory store's dict; its partition index, see _put
        for key, partition in store._key_partition.items():
            if partition in found:
                value = held.get(key)
                if value is not None:
                    found[partition].append((key, value))
        return found

    @staticmethod
    def scope(partition: int) -> PartitionScope:
        return PartitionScope(partition)

    def get_activation(self, destination: str, partition: int) -> dict[str, Any] | None:
        with event_scope(PartitionScope(partition)):
            value: dict[str, Any] | None = self.activations.data.get(
                activation_key(partition, destination)
            )
            return value

    def put_activation(
        self, destination: str, value: dict[str, Any] | None, partition: int
    ) -> None:
        key = activation_key(partition, destination)
        self._put(self.activations, key, value, PartitionScope(partition))

    def get_parking(self, destination: str, partition: int) -> dict[str, Any] | None:
        """A destination's parking lane in ``partition`` (worker.parking)."""
        with event_scope(PartitionScope(partition)):
            value: dict[str, Any] | None = self.parking.data.get(
                activation_key(partition, destination)
            )
            return value

    def put_parking(self, destination: str, value: dict[str, Any] | None, partition: int) -> None:
        key = activation_key(partition, destination)
        self._put(self.parking, key, value, PartitionScope(partition))

    def put_profile(self, profile_id: str, value: dict[str, Any] | None, scope: Any) -> None:
        self._put(self.profiles, profile_id, value, scope)

    def put_memberships(self, profile_id: str, value: dict[str, Any] | None, scope: Any) -> None:
        self._put(self.memberships, profile_id, value, scope)

    def _put(self, table: Any, key: str, value: dict[str, Any] | None, scope: Any) -> None:
        """What ``table[key] = value`` (``table.pop(key, None)`` for None) does,
        with the changelog message kept for ``flush``."""
        partition = scope.message.partition
        with event_scope(scope):
            if value is None:
                if key not in table.data:
                    return
                del table.data[key]
            else:
                table.data[key] = value
        index = getattr(table.data, "_key_partition", None)
        if index is not None:
            # The memory store's partition of each key, which it fills only from
            # the changelog: with this, a revoked partition's keys written here
            # are dropped with the recovered ones (Store.on_recovery_completed),
            # not left stale, and stored_memberships finds them.
            if value is None:
                index.pop(key, None)
            else:
                index[key] = partition
        topic, dump_key, dump_value = self._codecs[id(table)]
        tp = TopicPartition(topic, partition)
        message = (dump_key(key), None if value is None else dump_value(value))
        changes = self._pending.get(tp)
        if changes is None:
            changes = self._pending[tp] = _Changes(table)
        changes.messages.append(message)
