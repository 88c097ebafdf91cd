"""Parking and draining (worker/parking.py): how fast a worker parks a refusing
destination's records while the others go on, and how fast it drains them.

Run by hand against the local stack (make stack-up), from the repo root, on a
quiet machine:

    PYTHONPATH=. .venv/bin/python bench/parking.py --events 50000

Fresh topics of 8 partitions hold ``--events`` qualifications (a new profile
joining the segment each: one record per destination). Two destinations map
it, each on its own instant-ack endpoint of bench/throughput.py (8 shards; the
worker's shard limits off, so that the figures are the worker's, not the
limits'). One worker per phase, each with an app_id of its own (it reads the
whole backlog):

- direct: both endpoints accept; events/s from the first record to the last;
- parked: A answers ResourceNotFoundException to every call, so each of its
  records is parked while B's are put; events/s as above (B's records);
- drain: then A accepts again; A's records/s from its first record to the
  last, the worker idle otherwise (probe every second).

The summary at the end is markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.throughput import (
    JSON_CONTENT_TYPE,
    PARTITIONS,
    EndpointThread,
    InstantKinesis,
    Topics,
    create_topics,
    delete_topics,
    local_stack,
    machine,
    new_run,
)
from tests.support import LOCAL_AUTH, Stack, WorkerProcess, produce, qualification

SEGMENT = "bench-park"
T0 = "2024-01-01T00:00:00Z"


class RefusingKinesis(InstantKinesis):
    """Instant acks, or ResourceNotFoundException to every call while ``refusing``."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing = False

    async def handle(self, request: web.Request) -> web.Response:
        if self.refusing:
            await request.read()
            return web.Response(
                status=400,
                headers={"Content-Type": JSON_CONTENT_TYPE},
                body=b'{"__type":"ResourceNotFoundException","message":"bench: refusing"}',
            )
        return await super().handle(request)


def config(stack: Stack, app_id: str, topics: Topics, endpoints: dict[str, str]) -> dict[str, Any]:
    return {
        "app_id": app_id,
        "kafka": {
            "bootstrap_servers": stack.kafka_bootstrap,
            "qualifications_topic": topics.qualifications,
            "profiles_topic": topics.profiles,
            "dlq_topic": f"{app_id}-dlq",
        },
        "destinations": [
            {
                "name": name,
                "stream": f"{app_id}-{name}",
                "region": "us-east-1",
                "endpoint_url": url,
                "auth": dict(LOCAL_AUTH),
                "partition_key_namespaces": ["ecid"],
                "segments": [{"id": SEGMENT}],
                "shard_records_per_s": 0,
                "shard_bytes_per_s": 0,
                "park_probe_s": 1.0,
            }
            for name, url in endpoints.items()
        ],
    }


def wait_accepted(kinesis: InstantKinesis, count: int, worker: WorkerProcess, what: str) -> None:
    deadline = time.monotonic() + 900
    while kinesis.accepted < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {kinesis.accepted}/{count}\n{worker.log()}")
        time.sleep(0.2)


def phase(
    stack: Stack, workdir: Path, run: str, topics: Topics, events: int, refuse: bool
) -> dict[str, float]:
    app_id = f"{run}-{'parked' if refuse else 'direct'}"
    a, b = RefusingKinesis(), InstantKinesis()
    a.refusing = refuse
    with EndpointThread(a) as endpoint_a, EndpointThread(b) as endpoint_b:
        settings = config(stack, app_id, topics, {"a": endpoint_a.url, "b": endpoint_b.url})
        worker = WorkerProcess(settings, workdir, app_id)
        try:
            worker.start()
            wait_accepted(b, events, worker, "B")
            result = {"events_per_s": b.rate()}
            if not refuse:
                wait_accepted(a, events, worker, "A")
                return result
            deadline = time.monotonic() + 120
            while worker.metric("kd_parked_records", destination="a") < events:
                assert time.monotonic() < deadline, worker.log()
                time.sleep(0.2)
            result["parked"] = worker.metric("kd_parked_total", destination="a")
            a.refusing = False
            opened = time.monotonic()
            wait_accepted(a, events, worker, "A drained")
            result["drain_per_s"] = a.rate()
            result["drain_s"] = time.monotonic() - opened
            return result
        finally:
            worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    stack = local_stack()
    run, topics = new_run("bench-park")
    create_topics(stack.kafka_bootstrap, topics)
    try:
        backlog = [
            (
                topics.qualifications,
                f"p-{i:07d}".encode(),
                qualification(
                    f"p-{i:07d}", SEGMENT, "realized", T0, {"ecid": [{"id": f"p-{i:07d}"}]}
                ),
            )
            for i in range(args.events)
        ]
        asyncio.run(produce(stack.kafka_bootstrap, backlog))
        print(f"{args.events} events produced", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(os.environ.get("BENCH_KEEP") or tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            direct = phase(stack, workdir, run, topics, args.events, refuse=False)
            print("direct", direct, flush=True)
            parked = phase(stack, workdir, run, topics, args.events, refuse=True)
            print("parked", parked, flush=True)
    finally:
        delete_topics(stack.kafka_bootstrap, run)
    print(
        f"\n{machine()}\n\n"
        f"{args.events:,} events on {PARTITIONS} partitions, one worker, two destinations "
        "(instant-ack endpoints, shard limits off):\n\n"
        "| phase | rate |\n"
        "|---|---|\n"
        f"| both direct | {direct['events_per_s']:,.0f} events/s |\n"
        f"| A refusing (parked), B direct | {parked['events_per_s']:,.0f} events/s "
        f"({parked['events_per_s'] / direct['events_per_s']:.2f}x) |\n"
        f"| A draining {parked['parked']:,.0f} parked records, idle otherwise | "
        f"{parked['drain_per_s']:,.0f} records/s ({parked['drain_s']:.1f} s) |"
    )


if __name__ == "__main__":
    main()
