"""Reproduces a faust-streaming 0.15.3 bug (not yet reported): records dropped when
table recovery empties the active-partition set while the consumer thread is fetching.

Needs faust-streaming 0.15.3, aiokafka 0.14 and a broker on 127.0.0.1:9092
(or $KAFKA_BOOTSTRAP):

    python docs/upstream/faust_fetch_race.py           # as released: records lost
    python docs/upstream/faust_fetch_race.py --fixed   # the proposed fix: none lost

(``--worker-fixes`` applies this project's ``worker.faust`` instead; that is
how tests/integration/test_fetch_race.py runs it.)

It produces 100 records to a fresh topic and one to the changelog of a table,
then starts an app with that table and one agent. Recovery of the table
pauses the changelog partition and resumes the input partition only at its
end; in between, Faust's live ``_active_partitions`` set is empty. This
script only widens that window, which a loaded machine hits by itself
(docs/upstream/faust-fetch-race.md): the end of recovery takes 1 s, and the
consumer thread looks at the set it was handed once it is empty and records
are prefetched (at most 2 s). Once the app runs, 10 more records are
produced: they are received and committed, so the dropped records, which
never had a committed offset before them, are lost for good.

Prints what was received and committed; exits 0 only if nothing was lost.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.consumer.fetcher import Fetcher
from faust.tables.recovery import Recovery

BROKER = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
NAME = f"fetch-race-{uuid.uuid4().hex[:6]}"
WAITING, LATER = 100, 10

if "--worker-fixes" in sys.argv:
    from worker import faust as worker_fixes

    worker_fixes.apply()
elif "--fixed" in sys.argv:
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

# -- widening the window (timing only) -------------------------------------------------------
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
_on_recovery_completed = Recovery.on_recovery_completed


async def slow_recovery_end(self, generation_id=0):  # type: ignore[no-untyped-def]
    """Recovery's last step is slow (table callbacks, a broker round trip)."""
    await asyncio.sleep(1.0)
    await _on_recovery_completed(self, generation_id)


Recovery.on_recovery_completed = slow_recovery_end  # type: ignore[method-assign]

# -- the app -------------------------------------------------------------------------------
app = faust.App(
    NAME,
    broker=f"kafka://{BROKER}",
    store="memory://",
    topic_partitions=1,
    consumer_auto_offset_reset="earliest",
    broker_commit_interval=0.5,
    web_enabled=False,
)
table = app.Table("counts", partitions=1, default=int)
topic = app.topic(
    NAME, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
)
received: list[bytes] = []


@app.agent(topic)
async def collect(stream):  # type: ignore[no-untyped-def]
    async for value in stream:
        received.append(value)


@app.task
async def report() -> None:
    await asyncio.sleep(6)
    await produce(range(WAITING, WAITING + LATER))
    for _ in range(40):
        await asyncio.sleep(0.5)
        if len(received) >= WAITING + LATER:
            break
    await asyncio.sleep(2)  # a commit
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(NAME)
    finally:
        await admin.close()
    committed = next((m.offset for tp, m in offsets.items() if tp.topic == NAME), None)
    lost = sorted(set(range(WAITING + LATER)) - {int(v) for v in received})
    print(
        f"received {len(received)} of {WAITING + LATER} records; committed offset {committed}; "
        f"lost {len(lost)}" + (f" (offsets {lost[0]}-{lost[-1]})" if lost else ""),
        flush=True,
    )
    os._exit(0 if not lost else 1)


async def produce(values: range) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=BROKER)
    await producer.start()
    try:
        for i in values:
            await producer.send_and_wait(NAME, key=b"k", value=str(i).encode())
    finally:
        await producer.stop()


async def prepare() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    try:
        compact = {"cleanup.policy": "compact"}
        changelog = NewTopic(f"{NAME}-counts-changelog", 1, 1, topic_configs=compact)
        await admin.create_topics([NewTopic(NAME, 1, 1), changelog])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=BROKER)
    await producer.start()
    try:
        # A table with state to recover, as after a restart.
        await producer.send_and_wait(f"{NAME}-counts-changelog", key=b'"k"', value=b"1")
    finally:
        await producer.stop()
    await produce(range(WAITING))


if __name__ == "__main__":
    asyncio.run(prepare())
    app.conf.datadir = os.environ.get("FETCH_RACE_DATADIR", f"/tmp/{NAME}-data")
    sys.argv[1:] = ["worker", "-l", "warn"]
    app.main()
