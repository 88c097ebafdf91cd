"""One broken destination never stops the others (issue 15; worker/parking.py),
on the real stack: Kafka, moto, and the fault proxy in front of destination A.

Two destinations map the same segment; two workers share 8 partitions; a load
of 50 new profiles a second runs throughout (each profile enters the segment,
then leaves it). Destination A's endpoint answers ResourceNotFoundException
to every call for 60 s (as a deleted stream does), and one worker is killed
with SIGKILL in the middle of it and started again. Destination B gets every
record during the outage; afterwards A gets every record too: each profile's
records end with its exit, none lost, none out of order. The figures (B's
delay during the outage, A's parking and draining) are printed and reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.harness import (
    SEG_A,
    Deployment,
    LoadProducer,
    Report,
    cli,
    ecid,
    unique,
    ups,
)
from tests.support import (
    ProxyThread,
    Stack,
    StreamReader,
    WorkerProcess,
    qualification,
    run_sync,
)

RATE = 100.0  # events/s: 50 profiles enter, 50 leave
PROFILES = 3600  # 72 s of load at RATE: through the whole outage (from 10 s to 70 s)
LAG = 100  # a profile leaves 100 slots (1 s) after it entered
OUTAGE_S = 60.0
T0 = "2021-06-01T00:00:00Z"
T1 = "2021-06-02T00:00:00Z"


def destinations() -> dict[str, dict[str, Any]]:
    one = {
        "partition_key_namespaces": ["ecid"],
        "segments": [{"id": SEG_A}],
        "park_probe_s": 2.0,
    }
    return {"a": {"name": "a", **one}, "b": {"name": "b", **one}}


def plan(profiles: Sequence[str], topic: str) -> list[tuple[str, str, str, bytes]]:
    """Profile k enters at slot k and leaves at slot k + LAG."""
    steps: list[tuple[str, str, str, bytes]] = []
    for slot in range(len(profiles) + LAG):
        if slot < len(profiles):
            p = profiles[slot]
            steps.append((topic, "enter", p, qualification(p, SEG_A, "realized", T0, ecid(p))))
        if slot >= LAG:
            p = profiles[slot - LAG]
            steps.append((topic, "leave", p, qualification(p, SEG_A, "exited", T1, ecid(p))))
    return steps


def statuses(deployment: Deployment, stream: int) -> dict[str, list[str]]:
    """Each key's statuses in stream order, from a fresh read of every shard."""
    reader = StreamReader(deployment.kinesis, deployment.streams[stream])
    reader.poll()
    found: dict[str, list[str]] = {}
    for key, record in reader.records:
        found.setdefault(key, []).append(ups(record)[SEG_A]["status"])
    return found


def wait_complete(
    deployment: Deployment,
    stream: int,
    profiles: Sequence[str],
    timeout: float,
    last: str = "exited",
) -> dict[str, list[str]]:
    """Waits until each profile's records in the stream end with ``last``."""
    deadline = time.monotonic() + timeout
    while True:
        found = statuses(deployment, stream)
        done = sum(1 for s in found.values() if s and s[-1] == last)
        if done == len(profiles) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def violations(found: dict[str, list[str]]) -> list[str]:
    """Keys whose records are not "realized then exited" (repeats of each allowed)."""
    wrong = []
    for key, seen in found.items():
        collapsed = [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]
        if collapsed != ["realized", "exited"]:
            wrong.append(f"{key}: {seen}")
    return wrong


async def parking_offsets(stack: Stack, topic: str) -> str:
    """ "empty" when every partition's first offset is its end (all records deleted),
    else the offsets."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        assert tps, f"no parking topic {topic}"
        first = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        if all(first[tp] == ends[tp] for tp in tps):
            return "empty"
        return str({tp.partition: (first[tp], ends[tp]) for tp in tps})
    finally:
        await consumer.stop()


def readyz(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    status, body = worker.get("/readyz")
    return status, orjson.loads(body)


def test_a_refusing_destination_is_parked_and_the_other_goes_on(
    stack: Stack, tmp_path: Path, report: Report
) -> None:
    with (
        Deployment(
            stack, unique("it-park"), tmp_path, partitions=8, destinations=destinations()
        ) as deployment,
        ProxyThread(stack.kinesis_endpoint) as proxy,
    ):
        deployment.destinations[0]["endpoint_url"] = proxy.url
        faults = proxy.proxy.faults
        faults.outage_mode = "not_found"
        workers = [deployment.worker(f"w{i}") for i in range(2)]
        for worker in workers:
            worker.start(wait_ready=False)
        for worker in workers:
            worker.wait_ready()

        profiles = [f"k-{i:05d}" for i in range(PROFILES)]
        load = LoadProducer(
            stack.kafka_bootstrap, plan(profiles, deployment.q_topic), RATE, gates=[]
        )
        load.start()
        time.sleep(10)

        # -- the outage ----------------------------------------------------------------
        outage_at = time.monotonic()
        faults.outage_for(OUTAGE_S)
        b = StreamReader(deployment.kinesis, deployment.streams[1])
        first_seen: dict[str, float] = {}
        parked_seen = False
        killed = False
        while time.monotonic() < outage_at + OUTAGE_S - 2:
            b.poll()
            now = time.monotonic()
            for key, _ in b.records:
                first_seen.setdefault(key, now)
            if not killed and now > outage_at + 20:
                parked = sum(w.metric("kd_parked_records", destination="a") for w in workers)
                assert parked > 0, "nothing parked 20 s into the outage"
                for worker in workers:
                    status, body = readyz(worker)
                    assert status == 200, body
                    assert body["destinations"]["a"]["state"] == "parked", body
                    assert "ResourceNotFoundException" in body["detail"], body
                    assert body["destinations"]["b"]["state"] == "direct", body
                    assert worker.get("/healthz")[0] == 200
                parked_seen = True
                workers[1].kill()
                killed = True
                workers[1] = deployment.worker("w1")
                workers[1].start(wait_ready=False)
            time.sleep(0.5)
        assert parked_seen

        # B got every entry whose event was sent up to 10 s before now.
        sent_by = time.monotonic() - 10
        b.poll()
        in_b = {key for key, _ in b.records}
        expected = {f"ecid-{s.profile}" for s in load.sent if s.sent_at < sent_by}
        missing = expected - in_b
        assert not missing, (
            f"B lacks {len(missing)} records during the outage, e.g. {sorted(missing)[:5]}"
        )
        sent_at = {f"ecid-{s.profile}": s.sent_at for s in load.sent if s.kind == "enter"}
        delays = sorted(
            first_seen[k] - sent_at[k]
            for k in first_seen
            if k in sent_at and outage_at < sent_at[k] < outage_at + OUTAGE_S - 12
        )
        a_during = statuses(deployment, 0)

        # -- after -----------------------------------------------------------------------
        while not load.done:
            time.sleep(0.5)
        assert load.error is None, load.error
        recovered_at = outage_at + OUTAGE_S
        found_b = wait_complete(deployment, 1, profiles, 120)
        found_a = wait_complete(deployment, 0, profiles, 240)
        drained_at = time.monotonic()
        for worker in workers:
            worker.wait_ready()
        assert set(found_b) == {f"ecid-{p}" for p in profiles}, "B: every profile"
        assert set(found_a) == {f"ecid-{p}" for p in profiles}, "A: every profile"
        assert violations(found_b) == [], violations(found_b)[:5]
        assert violations(found_a) == [], violations(found_a)[:5]
        for worker in workers:
            assert worker.metric("kd_destination_state", destination="a", state="direct") == 1
            assert worker.metric("kd_parked_records", destination="a") == 0
        # Sent, then deleted from the parking topic (its disk, the personal data).
        deadline = time.monotonic() + 30
        while (left := run_sync(parking_offsets(stack, f"{deployment.name}-parked-a"))) != "empty":
            assert time.monotonic() < deadline, f"parked records left (first, end): {left}"
            time.sleep(0.5)
        parked_total = sum(w.metric("kd_parked_total", destination="a") for w in workers)
        drained_total = sum(w.metric("kd_drained_total", destination="a") for w in workers)

        records_a = sum(len(s) for s in found_a.values())
        records_b = sum(len(s) for s in found_b.values())
        figures = {
            "profiles": PROFILES,
            "records_a": records_a,
            "records_b": records_b,
            "duplicates_a": records_a - 2 * PROFILES,
            "duplicates_b": records_b - 2 * PROFILES,
            "a_records_during_outage": sum(len(s) for s in a_during.values()),
            "b_delay_p50_s": round(delays[len(delays) // 2], 2) if delays else None,
            "b_delay_max_s": round(delays[-1], 2) if delays else None,
            "parked_by_survivor_a": parked_total,
            "drained_by_survivor_a": drained_total,
            "a_complete_after_outage_s": round(drained_at - recovered_at, 1),
        }
        report("parking", figures, f"parking: {figures}")
        print(figures)


def test_pause_and_resume_through_the_control_topic(stack: Stack, tmp_path: Path) -> None:
    with Deployment(
        stack, unique("it-pause"), tmp_path, partitions=4, destinations=destinations()
    ) as deployment:
        worker = deployment.worker()
        worker.start()
        config = deployment.write_config()
        result, _ = cli("pause", "--config", str(config), "--destination", "a", "--timeout", "60")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "taken by 4/4 partition(s)" in result.stdout
        assert "'a' paused" in result.stdout
        profiles = [f"p-{i:03d}" for i in range(50)]
        deployment.send(
            *[("q", p, qualification(p, SEG_A, "realized", T0, ecid(p))) for p in profiles]
        )
        deployment.wait_consumed()
        assert len(statuses(deployment, 1)) == len(profiles), "B is not paused"
        assert statuses(deployment, 0) == {}, "A is paused"
        status, body = readyz(worker)
        assert status == 200
        assert body["destinations"]["a"]["state"] == "paused"
        assert body["destinations"]["a"]["parkedRecords"] == len(profiles)
        assert worker.metric("kd_parked_records", destination="a") == len(profiles)

        # Paused survives a restart: the state is in the parking table.
        assert worker.stop() == 0, worker.log()
        again = deployment.worker("again", data_dir=worker.data_dir)
        again.start()
        deployment.send(
            ("q", "p-late", qualification("p-late", SEG_A, "realized", T0, ecid("p-late")))
        )
        deployment.wait_consumed()
        assert statuses(deployment, 0) == {}, "A is still paused"

        result, _ = cli("resume", "--config", str(config), "--destination", "a", "--timeout", "60")
        assert result.returncode == 0, result.stdout + result.stderr
        found = wait_complete(deployment, 0, [*profiles, "p-late"], 60, last="realized")
        assert all(s == ["realized"] for s in found.values()), found
        assert again.metric("kd_destination_state", destination="a", state="direct") == 1

        refused, _ = cli("pause", "--config", str(config), "--destination", "nope")
        assert refused.returncode == 2, refused.stdout + refused.stderr
