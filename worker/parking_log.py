"""The parking topics in Kafka (worker.parking's ``ParkingLog``).

Records are written with the Faust app's producer, the one that writes the
tables' changelogs and the dead letters (acks=all), and read back with a plain
aiokafka consumer of no group: how far a lane was sent is kept in the
``parking`` table, with the rest of the worker's state.

A parked record: key, the Kinesis partition key; value, the record's data;
headers, what its metrics and its dead letter need (``kd-status``,
``kd-source``: the input event's topic, partition, offset, ``kd-key``: its key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from mode import Service

from worker.kafka_client import kafka_client_kwargs
from worker.kinesis import Record
from worker.pipeline import Parked
from worker.settings import KafkaSettings
from worker.vocabulary import ExportStatus

READ_TIMEOUT_MS = 2000


def headers(parked: Parked) -> list[tuple[str, bytes]]:
    found = [
        ("kd-status", parked.status.value.encode()),
        ("kd-source", orjson.dumps(parked.source)),
    ]
    if parked.key is not None:
        found.append(("kd-key", parked.key))
    return found


def from_kafka(
    key: bytes | None,
    value: bytes | None,
    offset: int,
    timestamp_ms: int,
    found: Sequence[tuple[str, bytes]],
) -> Parked:
    """A parked record as read back (``headers`` and the producer's fields). A
    record some other writer put there, without our headers, is sent as it is
    (counted ``updated``), not left to stop its lane."""
    named = dict(found)
    try:
        status = ExportStatus(named["kd-status"].decode())
        source = orjson.loads(named["kd-source"])
    except (KeyError, ValueError, UnicodeDecodeError):
        status, source = ExportStatus.UPDATED, {"topic": None, "partition": None, "offset": None}
    return Parked(
        Record(value or b"", (key or b"").decode(errors="replace")),
        status,
        source,
        named.get("kd-key"),
        offset,
        timestamp_ms / 1000,
    )


class KafkaParkingLog(Service):
    """Writes with ``producer`` (Faust's), reads with a consumer of its own."""

    def __init__(self, producer: Any, kafka: KafkaSettings) -> None:
        super().__init__()
        self._producer = producer
        self._kafka = kafka
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = asyncio.Lock()

    async def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._kafka.bootstrap_servers,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **kafka_client_kwargs(self._kafka),
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def on_start(self) -> None:
        # Connected before the first assignment is planned (worker.parking), not
        # in the middle of it.
        async with self._lock:
            await self._reader()

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()

    async def trim(self, topic: str, partition: int, before: int) -> None:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self._kafka.bootstrap_servers,
                **kafka_client_kwargs(self._kafka),
            )
            await admin.start()
            self._admin = admin
        await self._admin.delete_records(
            {TopicPartition(topic, partition): RecordsToDelete(before_offset=before)}
        )

    async def write(self, topic: str, partition: int, records: Sequence[Parked]) -> list[int]:
        """Returns once every record is written, or once every send settled
        when one failed (none lands after the failure is raised)."""
        futures = []
        failure: BaseException | None = None
        try:
            for p in records:
                key = p.record.partition_key.encode()
                futures.append(
                    await self._producer.send(
                        topic, key, p.record.data, partition, None, headers(p)
                    )
                )
        except Exception as exc:
            failure = exc
        results = await asyncio.gather(*futures, return_exceptions=True)
        failure = failure or next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure
        return [metadata.offset for metadata in results if not isinstance(metadata, BaseException)]

    async def end_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]:
        async with self._lock:
            consumer = await self._reader()
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Parked]:
        tp = TopicPartition(topic, partition)
        async with self._lock:
            consumer = await self._reader()
            if consumer.assignment() != {tp}:
                consumer.assign([tp])
            consumer.seek(tp, offset)
            fetched = await consumer.getmany(tp, timeout_ms=READ_TIMEOUT_MS, max_records=limit)
        return [
            from_kafka(r.key, r.value, r.offset, r.timestamp, r.headers)
            for r in fetched.get(tp, [])
        ]
