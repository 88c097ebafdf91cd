"""Reproduces a faust-streaming 0.15.3 bug (not yet reported): records dropped when recovery empties
the active-partition set while the consumer thread is fetching.

Needs faust-streaming 0.15.3, aiokafka 0.14 and a broker on 127.0.0.1:9092:

    python docs/upstream/faust_fetch_race.py            # Faust as released: records lost
    python docs/upstream/faust_fetch_race.py --fixed    # with the fix: all received

It produces 100 records to a fresh topic and one to the changelog of a
table, then starts an app with that table and one agent. Recovery of the
table pauses the changelog partition and only later resumes the input
partition; in between, Faust's live
``_active_partitions`` set is empty. This script only widens that window,
which a loaded machine hits by itself (docs/upstream/faust-fetch-race.md):
the end of recovery takes 1 s, and the consumer thread looks at the set it
was handed once it is empty and records are prefetched (at most 2 s).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.consumer.fetcher import Fetcher
from faust.tables.recovery import Recovery

BROKER = "127.0.0.1:9092"
NAME = f"fetch-race-{uuid.uuid4().hex[:6]}"
RECORDS = 100

app = faust.App(
    NAME,
    broker=f"kafka://{BROKER}",
    store="memory://",
    topic_partitions=1,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
)
table = app.Table("counts", partitions=1, default=int)
topic = app.topic(
    NAME, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
)
received: list[bytes] = []

_fetched_records = Fetcher.fetched_records


async def slow_to_read_the_set(self, partitions, timeout=0, max_records=None):  # type: ignore[no-untyped-def]  # noqa: ASYNC109
    """aiokafka's fetched_records, entered a little late: by then recovery has
    emptied the set Faust handed over (the live object) and the background
    fetcher has prefetched the input partition."""
    for _ in range(400):
        if not partitions and self._records:
            break
        await asyncio.sleep(0.005)
    return await _fetched_records(self, partitions, timeout=timeout, max_records=max_records)


Fetcher.fetched_records = slow_to_read_the_set  # type: ignore[method-assign]

# Recovery's last step is slow (table callbacks, a broker round trip): the
# changelog is paused and the input partition not yet resumed for a while.
_on_recovery_completed = Recovery.on_recovery_completed


async def slow_recovery_end(self, generation_id=0):  # type: ignore[no-untyped-def]
    await asyncio.sleep(1.0)
    await _on_recovery_completed(self, generation_id)


Recovery.on_recovery_completed = slow_recovery_end  # type: ignore[method-assign]

if "--fixed" in sys.argv:
    from faust.transport import consumer as faust_consumer

    async def _wait_next_records(self, timeout):  # type: ignore[no-untyped-def]  # noqa: ASYNC109
        """0.15.3's body; the thread gets a frozen copy, and nothing when it is empty."""
        if not self.flow_active:
            await self.wait(self.can_resume_flow)
        try:
            self.not_waiting_next_records.set()
            active = None if self.app.client_only else self._get_active_partitions()
            fetch_for = None if active is None else frozenset(active)
            if fetch_for is not None and not fetch_for:
                await self.sleep(0.1)
                return {}, active
            return await self._getmany(active_partitions=fetch_for, timeout=timeout), active
        finally:
            self.not_waiting_next_records.set()

    faust_consumer.Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign]


@app.agent(topic)
async def collect(stream):  # type: ignore[no-untyped-def]
    async for value in stream:
        received.append(value)


@app.task
async def report() -> None:
    await asyncio.sleep(20)
    tp = next(iter(tp for tp in app.consumer.assignment() if tp.topic == NAME))
    position = await app.consumer.position(tp)
    print(f"received {len(received)} of {RECORDS} records; consumer position {position}")
    os._exit(0 if len(received) == RECORDS else 1)


async def produce() -> None:
    producer = AIOKafkaProducer(bootstrap_servers=BROKER)
    await producer.start()
    try:
        # A table with state to recover, as after a restart.
        await producer.send_and_wait(f"{NAME}-counts-changelog", key=b'"k"', value=b"1")
        for i in range(RECORDS):
            await producer.send_and_wait(NAME, key=b"k", value=str(i).encode())
    finally:
        await producer.stop()


if __name__ == "__main__":
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
        await admin.start()
        try:
            compact = {"cleanup.policy": "compact"}
            await admin.create_topics(
                [
                    NewTopic(NAME, 1, 1),
                    NewTopic(f"{NAME}-counts-changelog", 1, 1, topic_configs=compact),
                ]
            )
        finally:
            await admin.close()

    asyncio.run(create())
    asyncio.run(produce())
    sys.argv[1:] = ["worker", "-l", "warn"]
    app.main()
