"""PutRecords throughput to the local endpoint: the ceiling, our writer, a naive writer.

Run by hand against the local stack (make stack-up), from the repo root:

    PYTHONPATH=. .venv/bin/python bench/put_records.py --records 20000

In one run, on the same records (AEP-like JSON of ~400 bytes over 2,000
partition keys) and fresh streams of 4 shards each:

- ceiling: raw aioboto3 ``put_records`` with batches of 500 built beforehand,
  8 calls in flight (the writer's default);
- writer: ``worker.kinesis.KinesisWriter.put_all`` on batches of 2,000 records
  (the worker's default batch), which also checks sizes, keeps per-key order
  and reports outcomes;
- naive: one ``put_record`` per record, awaited in turn (as RudderStack does),
  on a sample, extrapolated to records/s.

Record the printed figures and ratios in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import aioboto3
import boto3
import orjson

from worker.kinesis import AioBotoTransport, KinesisWriter, Record
from worker.settings import DestinationSettings

ENDPOINT = os.environ.get("KINESIS_ENDPOINT", "http://127.0.0.1:4567")
AWS: dict[str, Any] = {
    "aws_access_key_id": "bench",
    "aws_secret_access_key": "bench",
    "region_name": "us-east-1",
}


def make_records(count: int) -> list[Record]:
    records = []
    for i in range(count):
        key = f"ecid-{i % 2000:06d}-14575006536349286404619648085736425115"
        body = {
            "person": {"name": {"firstName": "Ana", "lastName": f"Silva {i}"}},
            "personalEmail": {"address": f"user{i}@example.com"},
            "segmentMembership": {
                "ups": {
                    "7841ba61-23c1-4bb3-a495-00d3g5fe1e93": {
                        "lastQualificationTime": "2020-05-25T21:24:39Z",
                        "status": "realized",
                    }
                }
            },
            "identityMap": {"ecid": [{"id": key}]},
        }
        records.append(Record(orjson.dumps(body), key))
    return records


def create_stream(name: str, shards: int) -> None:
    client = boto3.client("kinesis", endpoint_url=ENDPOINT, **AWS)
    client.create_stream(StreamName=name, ShardCount=shards)
    while (
        client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
        != "ACTIVE"
    ):
        time.sleep(0.1)


def delete_stream(name: str) -> None:
    boto3.client("kinesis", endpoint_url=ENDPOINT, **AWS).delete_stream(StreamName=name)


async def ceiling(stream: str, records: list[Record]) -> float:
    batches = [
        [{"Data": r.data, "PartitionKey": r.partition_key} for r in records[i : i + 500]]
        for i in range(0, len(records), 500)
    ]
    limit = asyncio.Semaphore(8)
    async with aioboto3.Session(**AWS).client("kinesis", endpoint_url=ENDPOINT) as client:

        async def put(batch: list[dict[str, Any]]) -> None:
            async with limit:
                reply = await client.put_records(StreamName=stream, Records=batch)
                assert reply["FailedRecordCount"] == 0

        started = time.perf_counter()
        await asyncio.gather(*(put(b) for b in batches))
        return len(records) / (time.perf_counter() - started)


async def writer(stream: str, records: list[Record]) -> float:
    destination = DestinationSettings(
        name="bench",
        stream=stream,
        region="us-east-1",
        endpoint_url=ENDPOINT,
        auth={"access_key_id": "bench", "secret_access_key": "bench"},
        segments=[{"id": "s"}],
    )
    kinesis = KinesisWriter(stream, AioBotoTransport(destination.transport()))
    await kinesis.start()
    try:
        started = time.perf_counter()
        for i in range(0, len(records), 2000):
            outcomes = await kinesis.put_all(records[i : i + 2000])
            assert all(o.accepted for o in outcomes)
        return len(records) / (time.perf_counter() - started)
    finally:
        await kinesis.close()


async def naive(stream: str, records: list[Record]) -> float:
    async with aioboto3.Session(**AWS).client("kinesis", endpoint_url=ENDPOINT) as client:
        started = time.perf_counter()
        for record in records:
            await client.put_record(
                StreamName=stream, Data=record.data, PartitionKey=record.partition_key
            )
        return len(records) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--naive-sample", type=int, default=1_000)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    records = make_records(args.records)
    results: dict[str, float] = {}
    for name, run, sample in (
        ("ceiling", ceiling, records),
        ("writer", writer, records),
        ("naive", naive, records[: args.naive_sample]),
    ):
        stream = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        create_stream(stream, args.shards)
        try:
            results[name] = await run(stream, sample)
        finally:
            delete_stream(stream)
        print(f"{name:8} {len(sample):>7} records: {results[name]:>9,.0f} records/s", flush=True)
    print(
        f"writer / ceiling = {results['writer'] / results['ceiling']:.2f}; "
        f"writer / naive = {results['writer'] / results['naive']:.1f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())
