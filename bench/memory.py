"""Peak memory of one batch whose few events make many large records (issue 11).

The case: a profile with a 500 KB selected attribute, then 300 qualifications
of it (about 31 KB of input) for a segment mapped to 2 destinations, in one
batch. Each qualification exports the whole profile to both destinations:
300 MB of records from 31 KB of input.

The real BatchProcessor and KinesisWriter run in-process; the transport
encodes each PutRecords call like botocore (base64 in a JSON body) and
accepts it, so the figure is the worker's own memory, not an endpoint's. Each
configuration runs in a fresh process; the figure is the peak RSS
(``ru_maxrss``) over the RSS once the profile is stored.

    PYTHONPATH=. .venv/bin/python bench/memory.py --budget-mib 16 64

Also runs on the code before the budget (a checkout of 2e8ed64~1), where
``--budget-mib`` has no effect. Record the figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import orjson

SEGMENT = "s-1"
PROFILE = "p-0001"


def clock(i: int) -> str:
    return f"{i // 60 % 60:02d}:{i % 60:02d}"


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Tables:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], bytes] = {}

    def get_profile(self, profile_id: str, scope: Any) -> Any:
        value = self.values.get(("p", profile_id))
        return None if value is None else orjson.loads(value)

    def get_memberships(self, profile_id: str, scope: Any) -> Any:
        value = self.values.get(("m", profile_id))
        return None if value is None else orjson.loads(value)

    def put_profile(self, profile_id: str, value: Any, scope: Any) -> None:
        self.values[("p", profile_id)] = orjson.dumps(value)

    def put_memberships(self, profile_id: str, value: Any, scope: Any) -> None:
        self.values[("m", profile_id)] = orjson.dumps(value)

    async def flush(self) -> None:
        pass


class DeadLetters:
    async def send(self, key: bytes | None, value: bytes) -> None:
        pass


class Transport:
    """Encodes a call as botocore would, then accepts every record."""

    async def put_records(self, stream: str, records: Sequence[tuple[bytes, str]]) -> Any:
        from worker.kinesis import PutReply

        body = orjson.dumps(
            {
                "StreamName": stream,
                "Records": [
                    {"Data": base64.b64encode(data).decode(), "PartitionKey": key}
                    for data, key in records
                ],
            }
        )
        await asyncio.sleep(0.001)
        del body
        return [PutReply(shard_id="shardId-000000000000") for _ in records]

    async def describe_stream(self, stream: str) -> Any:
        from worker.kinesis import StreamSummary

        return StreamSummary("ACTIVE", 1, 1024 * 1024)

    async def list_shards(self, stream: str) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        pass


async def measure(budget_mib: int, events: int, attribute_kb: int) -> dict[str, Any]:
    from worker.kinesis import KinesisWriter, WriterConfig
    from worker.pipeline import BatchProcessor, Destination, InputMessage
    from worker.settings import Settings

    settings = Settings.model_validate(
        {
            "kafka": {"qualifications_topic": "q", "profiles_topic": "p"},
            "runtime": {"max_buffer_bytes": budget_mib * 2**20},
            "destinations": [
                {
                    "name": name,
                    "stream": name,
                    "region": "us-east-1",
                    "segments": [{"id": SEGMENT}],
                    "attributes": ["person.notes"],
                }
                for name in ("one", "two")
            ],
        }
    )
    destinations = [
        Destination(d, KinesisWriter(d.stream, Transport(), WriterConfig()))
        for d in settings.destinations
    ]
    arguments: list[Any] = [settings, destinations, Tables(), DeadLetters()]
    if "memory" in inspect.signature(BatchProcessor).parameters:
        from worker.budget import MemoryBudget

        arguments.append(MemoryBudget(settings.runtime.max_buffer_bytes))
    processor = BatchProcessor(*arguments)
    update = {"profileId": PROFILE, "attributes": {"person": {"notes": "n" * attribute_kb * 1000}}}
    await processor.process([InputMessage("p", 0, 0, PROFILE.encode(), orjson.dumps(update))])
    qualifications = [
        InputMessage(
            "q",
            0,
            i,
            PROFILE.encode(),
            orjson.dumps(
                {
                    "profileId": PROFILE,
                    "segmentId": SEGMENT,
                    "status": "realized" if i % 2 == 0 else "exited",
                    "qualificationTime": f"2020-05-25T{i // 3600:02d}:{clock(i)}Z",
                }
            ),
        )
        for i in range(events)
    ]
    input_bytes = sum(len(m.value or b"") + len(m.key or b"") for m in qualifications)
    before = rss_mib()
    report = await processor.process(qualifications)
    return {
        "budget_mib": budget_mib,
        "budget_applies": len(arguments) == 5,
        "input_kb": round(input_bytes / 1000, 1),
        "records": report.exports,
        "records_mb": round(report.exports * attribute_kb / 1000, 1),
        "rss_before_mib": round(before, 1),
        "peak_growth_mib": round(peak_mib() - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-mib", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--attribute-kb", type=int, default=500)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(asyncio.run(measure(args.one, args.events, args.attribute_kb))))
        return
    for budget in args.budget_mib:
        command = [sys.executable, __file__, "--one", str(budget)]
        command += ["--events", str(args.events), "--attribute-kb", str(args.attribute_kb)]
        print(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
