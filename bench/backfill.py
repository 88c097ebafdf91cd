"""Backfill of a newly mapped segment: its rate, and what it does to live latency.

Run by hand against the local stack (make stack-up), from the repo root, on a
quiet machine:

    PYTHONPATH=. .venv/bin/python bench/backfill.py --members 100000 --live-rate 500

Fresh topics of 8 partitions. ``--members`` profiles qualify for segment B,
which the destination does not map yet; a first worker (mapping only A)
consumes them, so they are members of an unmapped segment. Then, each phase a
worker of the same app_id on the instant-ack Kinesis endpoint of
bench/throughput.py (8 shards, the worker's default shard limits of 1,000
records/s per shard unless ``--unpaced``):

- baseline: A only mapped; live events of A produced at ``--live-rate`` for
  ``--seconds``, each carrying its send time; latency = received - sent;
- backfill: A and B mapped (the restart backfills B's members) while the same
  live load runs; the backfill rate is B's records accepted / time from the
  first to the last, the live latency as above.

The summary at the end is markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.throughput import (
    PARTITIONS,
    EndpointThread,
    InstantKinesis,
    Topics,
    create_topics,
    delete_topics,
    local_stack,
    machine,
    new_run,
    percentile,
    produce_paced,
)
from tests.support import LOCAL_AUTH, Stack, WorkerProcess, produce, qualification

SEG_A = "bench-live-a"
SEG_B = "bench-backfill-b"
T0 = "2024-01-01T00:00:00Z"


class CountingKinesis(InstantKinesis):
    """Instant acks; live records (with a ``bench`` identity) give latencies, the
    others count as backfill, with the time of the first and the last."""

    def __init__(self) -> None:
        super().__init__(latency=False)
        self.live_ms: list[float] = []
        self.live_at: list[float] = []  # monotonic receive time of each live record
        self.backfilled = 0
        self.backfill_first = 0.0
        self.backfill_last = 0.0

    def put_records(self, records: list[dict[str, Any]], now: float, now_ns: int) -> dict[str, Any]:
        for record in records:
            data = orjson.loads(base64.b64decode(record["Data"]))
            sent = data.get("identityMap", {}).get("bench")
            if sent:
                self.live_ms.append((now_ns - int(sent[0]["id"])) / 1e6)
                self.live_at.append(now)
            else:
                self.backfilled += 1
                self.backfill_first = self.backfill_first or now
                self.backfill_last = now
        return super().put_records(records, now, now_ns)


def config(
    stack: Stack, app_id: str, topics: Topics, endpoint: str, segments: list[str], paced: bool
) -> dict[str, Any]:
    destination: dict[str, Any] = {
        "name": "bench",
        "stream": f"{app_id}-stream",
        "region": "us-east-1",
        "endpoint_url": endpoint,
        "auth": dict(LOCAL_AUTH),
        "partition_key_namespaces": ["ecid"],
        "segments": [{"id": s} for s in segments],
    }
    if not paced:
        destination |= {"shard_records_per_s": 0, "shard_bytes_per_s": 0}
    return {
        "app_id": app_id,
        "kafka": {
            "bootstrap_servers": stack.kafka_bootstrap,
            "qualifications_topic": topics.qualifications,
            "profiles_topic": topics.profiles,
            "dlq_topic": f"{app_id}-dlq",
        },
        "destinations": [destination],
    }


def live_event(prefix: str) -> Callable[[int, int], tuple[bytes, bytes]]:
    """A new profile joining A per event (one record each), stamped with its send time."""

    def make(index: int, sent_ns: int) -> tuple[bytes, bytes]:
        profile = f"{prefix}-{index:07d}"
        identities = {"ecid": [{"id": profile}], "bench": [{"id": str(sent_ns)}]}
        return profile.encode(), qualification(profile, SEG_A, "realized", T0, identities)

    return make


def phase(
    stack: Stack,
    workdir: Path,
    name: str,
    settings: dict[str, Any],
    kinesis: CountingKinesis,
    topics: Topics,
    rate: float,
    seconds: float,
    expect_backfill: int,
) -> dict[str, float]:
    worker = WorkerProcess(settings, workdir, name)
    try:
        worker.start()
        sent = asyncio.run(
            produce_paced(
                stack.kafka_bootstrap, topics.qualifications, rate, seconds, live_event(name)
            )
        )
        deadline = time.monotonic() + 300
        while len(kinesis.live_ms) < sent or kinesis.backfilled < expect_backfill:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name}: {len(kinesis.live_ms)}/{sent} live, "
                    f"{kinesis.backfilled}/{expect_backfill} backfilled\n{worker.log()}"
                )
            time.sleep(0.2)
    finally:
        worker.stop()
    if os.environ.get("BENCH_LATENCY_DUMP"):
        # (seconds since the first live record, latency ms, backfill span) for a look by hand
        first = kinesis.live_at[0] if kinesis.live_at else 0.0
        dump = {
            "live": [
                (at - first, ms) for at, ms in zip(kinesis.live_at, kinesis.live_ms, strict=True)
            ],
            "backfill": (kinesis.backfill_first - first, kinesis.backfill_last - first),
        }
        Path(f"{os.environ['BENCH_LATENCY_DUMP']}.{name}.json").write_bytes(orjson.dumps(dump))
    ordered = sorted(kinesis.live_ms)
    span = kinesis.backfill_last - kinesis.backfill_first
    return {
        "live": len(ordered),
        "p50_ms": percentile(ordered, 0.5),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1],
        "backfilled": kinesis.backfilled,
        "backfill_rate": kinesis.backfilled / span if span > 0 else 0.0,
        "backfill_s": span,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--live-rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--unpaced", action="store_true", help="no shard limits in the worker")
    args = parser.parse_args()
    stack = local_stack()
    run, topics = new_run("bench-bf")
    create_topics(stack.kafka_bootstrap, topics)
    paced = not args.unpaced
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(os.environ.get("BENCH_KEEP") or tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            members = [
                (
                    topics.qualifications,
                    f"m-{i:07d}".encode(),
                    qualification(f"m-{i:07d}", SEG_B, "realized", T0),
                )
                for i in range(args.members)
            ]
            asyncio.run(produce(stack.kafka_bootstrap, members))
            print(f"{args.members} members of B produced", flush=True)
            with EndpointThread(CountingKinesis()) as endpoint:
                settings = config(stack, run, topics, endpoint.url, [SEG_A], paced)
                loader = WorkerProcess(settings, workdir, "load")
                try:
                    loader.start()
                    deadline = time.monotonic() + 600
                    while loader.metric("kd_events_total") < args.members:
                        assert time.monotonic() < deadline, loader.log()
                        time.sleep(0.5)
                finally:
                    loader.stop()
            print("consumed by a worker that maps A only", flush=True)
            results = {}
            for name, segments, expect in (
                ("baseline", [SEG_A], 0),
                ("backfill", [SEG_A, SEG_B], args.members),
            ):
                with EndpointThread(CountingKinesis()) as endpoint:
                    kinesis = endpoint.kinesis
                    assert isinstance(kinesis, CountingKinesis)
                    settings = config(stack, run, topics, endpoint.url, segments, paced)
                    results[name] = phase(
                        stack,
                        workdir,
                        name,
                        settings,
                        kinesis,
                        topics,
                        args.live_rate,
                        args.seconds,
                        expect,
                    )
                print(name, results[name], flush=True)
    finally:
        delete_topics(stack.kafka_bootstrap, run)
    base, fill = results["baseline"], results["backfill"]
    pace = "paced: 0.5 x 1,000 records/s x 8 shards" if paced else "unpaced (no shard limits)"
    print(
        f"\n{machine()}\n\n"
        f"Backfill of {args.members:,} members, {pace}; live load {args.live_rate:.0f} "
        f"events/s for {args.seconds:.0f} s on {PARTITIONS} partitions:\n\n"
        "| phase | backfill records | backfill rate | live records | live p50 | live p99 "
        "| live max |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| A only (baseline) | - | - | {base['live']:.0f} | {base['p50_ms']:.0f} ms | "
        f"{base['p99_ms']:.0f} ms | {base['max_ms']:.0f} ms |\n"
        f"| B newly mapped (backfill) | {fill['backfilled']:.0f} in {fill['backfill_s']:.1f} s | "
        f"{fill['backfill_rate']:,.0f} records/s | {fill['live']:.0f} | {fill['p50_ms']:.0f} ms | "
        f"{fill['p99_ms']:.0f} ms | {fill['max_ms']:.0f} ms |"
    )


if __name__ == "__main__":
    main()
