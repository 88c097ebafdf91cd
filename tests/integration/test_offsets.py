"""Offsets Kafka never delivers never hold commits: transaction markers and compaction.

Input topics written by a transactional producer have a control record (the
commit marker) after each transaction, and a compacted `profile-updates` topic
loses superseded records. Both leave offsets without a record: at the end of a
partition (a commit then has to pass the marker to reach the end offset) and
at the committed offset after a restart. The worker must commit to the end
offsets and export exactly what the contract says, before and after a restart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.harness import (
    SEG_A,
    Deployment,
    ecid,
    stalled,
    unique,
    ups,
    wait_committed_to_the_end,
)
from tests.support import Stack, WorkerProcess, profile_update, qualification, run_sync


async def _transactions(bootstrap: str, transactions: list[list[tuple[str, str, bytes]]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"it-txn-{uuid.uuid4().hex[:8]}"
    )
    await producer.start()
    try:
        for messages in transactions:
            async with producer.transaction():
                for topic, key, value in messages:
                    await producer.send(topic, key=key.encode(), value=value)
    finally:
        await producer.stop()


async def _slow_transaction(
    bootstrap: str, messages: list[tuple[str, str, bytes]], worker: WorkerProcess
) -> None:
    """Sends the messages in a transaction and commits it only once the worker
    has handled them (read_uncommitted: it sees them before the commit)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"it-txn-{uuid.uuid4().hex[:8]}"
    )
    await producer.start()
    try:
        async with producer.transaction():
            before = worker.metric("kd_events_total")
            for topic, key, value in messages:
                await producer.send_and_wait(topic, key=key.encode(), value=value)
            deadline = time.monotonic() + 30
            while worker.metric("kd_events_total") < before + len(messages):
                assert time.monotonic() < deadline, "the worker did not handle the open transaction"
                await asyncio.sleep(0.1)
            await asyncio.sleep(2)  # committed meanwhile: up to the marker's offset
    finally:
        await producer.stop()


def test_a_transactional_producer_commits_to_the_end_offsets(stack: Stack, tmp_path: Path) -> None:
    with Deployment(stack, unique("it-txn"), tmp_path, partitions=3) as deployment:
        profiles = [f"t-{i:03d}" for i in range(60)]
        q, p = deployment.q_topic, deployment.p_topic

        def entered(chunk: list[str]) -> list[tuple[str, str, bytes]]:
            # Profiles that are members of nothing: their updates export nothing,
            # whichever topic the worker reads first.
            return [
                *[
                    (q, x, qualification(x, SEG_A, "realized", "2021-01-01T00:00:00Z", ecid(x)))
                    for x in chunk
                ],
                *[
                    (p, f"o-{x}", profile_update(f"o-{x}", {"person": {"email": "o@a.io"}}))
                    for x in chunk
                ],
            ]

        bootstrap = stack.kafka_bootstrap
        run_sync(
            _transactions(bootstrap, [entered(profiles[i : i + 10]) for i in range(0, 60, 10)])
        )
        worker = deployment.worker("first")
        worker.start()
        for x in profiles:
            deployment.records(0, f"ecid-{x}", 1)
        wait_committed_to_the_end(deployment, worker)
        assert worker.stop() == 0

        # After a restart the committed offsets point at commit markers.
        exits = [
            [
                (q, x, qualification(x, SEG_A, "exited", "2021-01-02T00:00:00Z", ecid(x)))
                for x in profiles[i : i + 20]
            ]
            for i in range(0, 60, 20)
        ]
        run_sync(_transactions(bootstrap, exits))
        restarted = deployment.worker("restarted")
        restarted.start()
        for x in profiles:
            records = deployment.records(0, f"ecid-{x}", 2)
            statuses = [ups(r)[SEG_A]["status"] for r in records]
            assert statuses == ["realized", "exited"], f"{x}: {statuses}\n{stalled(restarted)}"
        wait_committed_to_the_end(deployment, restarted)
        time.sleep(1)
        reader = deployment.readers[deployment.streams[0]]
        reader.poll()
        assert len(reader.records) == 2 * len(profiles), "no record repeated or unexpected"

        # A live transaction: its records are fetched and handled before its
        # commit marker exists, so the marker comes alone, with no ack after it.
        late = [f"t-late-{i}" for i in range(3)]
        run_sync(
            _slow_transaction(
                bootstrap,
                [
                    (q, x, qualification(x, SEG_A, "realized", "2021-01-03T00:00:00Z", ecid(x)))
                    for x in late
                ],
                restarted,
            )
        )
        wait_committed_to_the_end(deployment, restarted)
        assert restarted.metric("kd_hole_replays_total") == 0
        assert restarted.metric("kd_fetch_restarts_total") == 0
        assert restarted.repairs() == []
        restarted.stop()


async def _first_offset(bootstrap: str, topic: str) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        batch = await consumer.getmany(tp, timeout_ms=2000)
        records = batch.get(tp, [])
        return records[0].offset if records else None
    finally:
        await consumer.stop()


def test_a_compacted_profile_topic_commits_to_the_end_offsets(stack: Stack, tmp_path: Path) -> None:
    compact = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.001",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "100",
    }
    with Deployment(
        stack, unique("it-cmp"), tmp_path, partitions=1, p_config=compact
    ) as deployment:
        x = "c-0001"
        key = f"ecid-{x}"

        def update(email: str) -> tuple[str, str, bytes]:
            return ("p", x, profile_update(x, {"person": {"email": email}}, ecid(x)))

        worker = deployment.worker("first")
        worker.start()
        deployment.send(
            ("q", x, qualification(x, SEG_A, "realized", "2021-01-01T00:00:00Z", ecid(x))),
            update("v1@a.io"),
        )
        assert [r.get("person") for r in deployment.records(0, key, 2)] == [
            None,
            {"email": "v1@a.io"},
        ]
        wait_committed_to_the_end(deployment, worker)
        assert worker.stop() == 0  # committed: the offset of the next update, v2

        # v2 is superseded by v3 and compacted away: the committed offset holds no record.
        time.sleep(0.2)
        run_sync(_produce_spaced(stack.kafka_bootstrap, deployment.p_topic, x))
        deadline = time.monotonic() + 90
        while run_sync(_first_offset(stack.kafka_bootstrap, deployment.p_topic)) != 2:
            assert time.monotonic() < deadline, "the broker did not compact the topic in 90 s"
            time.sleep(1)

        restarted = deployment.worker("restarted")
        restarted.start()
        deployment.send(
            (
                "q",
                "c-marker",
                qualification(
                    "c-marker", SEG_A, "realized", "2021-01-01T00:00:00Z", ecid("c-marker")
                ),
            )
        )
        deployment.records(0, "ecid-c-marker", 1)
        emails = [r.get("person") for r in deployment.records(0, key, 3)]
        assert emails == [None, {"email": "v1@a.io"}, {"email": "v3@a.io"}]  # never v2
        wait_committed_to_the_end(deployment, restarted)
        assert restarted.metric("kd_hole_replays_total") == 0
        restarted.stop()


async def _produce_spaced(bootstrap: str, topic: str, profile: str) -> None:
    """v2 and v3 of the profile, then fillers 150 ms apart so that their
    segment rolls (the active segment is never compacted)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for email in ("v2@a.io", "v3@a.io"):
            value = profile_update(profile, {"person": {"email": email}}, ecid(profile))
            await producer.send_and_wait(topic, key=profile.encode(), value=value)
        for i in range(3):
            await asyncio.sleep(0.15)
            await producer.send_and_wait(topic, key=f"filler-{i}".encode(), value=None)
    finally:
        await producer.stop()
