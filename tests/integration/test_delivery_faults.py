"""The worker's Kinesis writer through the fault-injecting proxy to the real local endpoint.

No Faust here: ``KinesisWriter`` + ``AioBotoTransport`` as the pipeline builds
them, pointed at :class:`tests.faults.kinesis_proxy.KinesisFaultProxy`, which
forwards to the local Kinesis endpoint while throttling, failing and dropping
calls. The stream is then read back shard by shard from TRIM_HORIZON.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.faults.kinesis_proxy import KinesisFaultProxy
from tests.support import Stack, StreamFactory, StreamReader, destination_settings
from worker.kinesis import (
    AioBotoTransport,
    CallReport,
    KinesisWriter,
    Outcome,
    Record,
    WriterConfig,
    WriterObserver,
)

MIB = 1024 * 1024
RECORDS = 20_000
KEYS = 2_000
PUT_ALL_CALLS = 5
OUTAGE_AFTER_S = 3.0
OUTAGE_S = 7.0


@pytest.fixture
async def proxy(stack: Stack) -> AsyncIterator[KinesisFaultProxy]:
    async with KinesisFaultProxy(stack.kinesis_endpoint, seed=20_000) as running:
        yield running


@pytest.fixture
def stream(kinesis_stream: StreamFactory, unique_name: str) -> str:
    """A stream of one shard, the test's own."""
    return kinesis_stream(unique_name, shards=1)


class CountingFailures(WriterObserver):
    def __init__(self, failures: Counter[str]) -> None:
        self.failures = failures

    def call_done(self, report: CallReport) -> None:
        self.failures.update(report.failed_by_code)


async def open_writer(
    stream: str, proxy: KinesisFaultProxy, config: WriterConfig, retries: Counter[str]
) -> KinesisWriter:
    assert proxy.url is not None
    writer = KinesisWriter(
        stream,
        AioBotoTransport(destination_settings("faults", stream, proxy.url).transport()),
        config,
        CountingFailures(retries),
    )
    await writer.start()
    assert writer.writable, "the stream is ACTIVE and DescribeStreamSummary went through"
    return writer


def interleaved_records(seed: int) -> list[Record]:
    """RECORDS records over KEYS keys in a random interleaving; per key, n counts 0, 1, 2..."""
    keys = [f"profile-{i:04d}" for i in range(KEYS)] * (RECORDS // KEYS)
    random.Random(seed).shuffle(keys)
    next_n: dict[str, int] = defaultdict(int)
    records: list[Record] = []
    for key in keys:
        records.append(Record(orjson.dumps({"k": key, "n": next_n[key], "pad": "x" * 64}), key))
        next_n[key] += 1
    return records


async def read_back(stack: Stack, stream: str) -> list[tuple[str, dict[str, Any]]]:
    reader = StreamReader(stack.kinesis(), stream)
    await asyncio.to_thread(reader.poll)
    return reader.records


@pytest.mark.parametrize("outage_mode", ["refuse", "503"])
async def test_no_loss_no_reorder_under_throttling_failures_drops_and_an_outage(
    stack: Stack,
    kinesis_stream: StreamFactory,
    unique_name: str,
    proxy: KinesisFaultProxy,
    outage_mode: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = kinesis_stream(unique_name, shards=4)
    retries: Counter[str] = Counter()
    writer = await open_writer(stream, proxy, WriterConfig(backoff_max_s=0.5), retries)
    records = interleaved_records(seed=len(outage_mode))
    faults = proxy.faults
    faults.throttle_share = 0.30
    faults.internal_failure_share = 0.05
    faults.drop_share = 0.02
    faults.drop_every = 40  # at least one drop: 20,000 records take 40 calls or more
    faults.outage_mode = "refuse" if outage_mode == "refuse" else "503"

    async def outage() -> None:
        await asyncio.sleep(OUTAGE_AFTER_S)
        faults.outage_for(OUTAGE_S)

    started = time.monotonic()
    outage_task = asyncio.create_task(outage())
    outcomes: list[Outcome] = []
    try:
        size = len(records) // PUT_ALL_CALLS
        for first in range(0, len(records), size):
            outcomes += await writer.put_all(records[first : first + size])
    finally:
        outage_task.cancel()
        await writer.close()
    elapsed = time.monotonic() - started
    faults.clear()

    read = await read_back(stack, stream)
    counters = proxy.counters
    assert len(outcomes) == RECORDS
    assert all(outcome.accepted for outcome in outcomes), Counter(o.reason for o in outcomes)

    sent = {(r.partition_key, orjson.loads(r.data)["n"]) for r in records}
    got = Counter((data["k"], data["n"]) for _, data in read)
    assert all(key == data["k"] for key, data in read), "PartitionKey is the record's key"
    missing = sent - set(got)
    assert not missing, f"{len(missing)} records lost, e.g. {sorted(missing)[:5]}"
    assert set(got) == sent, "nothing was written that was not sent"

    by_key: dict[str, list[int]] = defaultdict(list)
    for key, data in read:
        by_key[key].append(data["n"])
    violations = 0
    for numbers in by_key.values():
        seen: set[int] = set()
        last = -1
        for n in numbers:
            if n in seen:
                continue  # a repeat of a number already seen: a duplicate, not a reorder
            seen.add(n)
            violations += n <= last
            last = n
    duplicates = len(read) - len(sent)

    with capsys.disabled():
        print(
            f"\n[faults/{outage_mode}] records={RECORDS} read={len(read)} "
            f"throttled={counters.records_throttled} failed={counters.records_failed} "
            f"dropped_calls={counters.connections_dropped} "
            f"records_in_dropped_calls={counters.records_in_dropped_calls} "
            f"outage_refused={counters.outage_refused} put_calls={counters.put_records_calls} "
            f"duplicates={duplicates} order_violations={violations} "
            f"writer_retries={dict(retries)} elapsed={elapsed:.1f}s"
        )
    assert violations == 0, "same-key order broken"
    assert 0 <= duplicates <= counters.records_in_dropped_calls
    # The faults really happened.
    assert counters.records_throttled > 0
    assert counters.records_failed > 0
    assert counters.connections_dropped > 0
    assert counters.outage_refused > 0, "the outage overlapped the traffic"


async def test_records_kinesis_can_never_accept_are_rejected_the_others_accepted(
    stack: Stack, stream: str, proxy: KinesisFaultProxy
) -> None:
    writer = await open_writer(stream, proxy, WriterConfig(backoff_max_s=0.5), Counter())
    proxy.faults.throttle_share = 0.3

    def padded(key: str, total: int) -> Record:
        """A JSON record whose data + key is exactly ``total`` bytes."""
        data = orjson.dumps({"k": key, "pad": ""})
        return Record(orjson.dumps({"k": key, "pad": "x" * (total - len(data) - len(key))}), key)

    too_large = Record(b"x" * (MIB + 1), "too-large")
    long_key = Record(orjson.dumps({"k": "long"}), "k" * 257)
    empty_key = Record(orjson.dumps({"k": "empty"}), "")
    just_fits = padded("just-fits", MIB)
    longest_key = Record(orjson.dumps({"k": "longest"}), "l" * 256)
    valid = [Record(orjson.dumps({"k": f"ok-{i}"}), f"ok-{i}") for i in range(20)]
    batch = [*valid[:10], too_large, just_fits, long_key, longest_key, empty_key, *valid[10:]]
    try:
        outcomes = await writer.put_all(batch)
    finally:
        await writer.close()

    assert outcomes[10].reason == "record_too_large"
    assert outcomes[12].reason == "invalid_partition_key"
    assert outcomes[14].reason == "invalid_partition_key"
    rejected = {10, 12, 14}
    assert not any(outcomes[i].accepted for i in rejected)
    assert all(o.accepted for i, o in enumerate(outcomes) if i not in rejected), outcomes
    read = await read_back(stack, stream)
    assert sorted(data["k"] for _, data in read) == sorted(
        [*(f"ok-{i}" for i in range(20)), "just-fits", "longest"]
    )
    assert proxy.counters.records_throttled > 0


async def test_a_key_throttled_for_over_a_thousand_waves_is_still_delivered(
    stream: str, proxy: KinesisFaultProxy
) -> None:
    """A hot shard throttled for long: with the default 5 s cap, ~45 min of failed waves."""
    config = WriterConfig(backoff_base_s=0.0001, backoff_max_s=0.0005)
    writer = await open_writer(stream, proxy, config, Counter())
    proxy.faults.throttle_share = 1.0

    def end_throttling(running: KinesisFaultProxy) -> None:
        if running.counters.records_throttled >= 1_100:
            running.faults.clear()

    proxy.on_call = end_throttling
    try:
        async with asyncio.timeout(120):
            outcomes = await writer.put_all([Record(b'{"k": "hot"}', "hot")])
    finally:
        await writer.close()
    assert outcomes == [Outcome(accepted=True)]
    assert proxy.counters.records_throttled >= 1_100


async def role_writer(stream: str, proxy: KinesisFaultProxy, auth: dict[str, Any]) -> KinesisWriter:
    """A started writer, through the proxy, whose destination assumes a role."""
    writer = KinesisWriter(
        stream, AioBotoTransport(destination_settings("role", stream, proxy.url, auth).transport())
    )
    await writer.start()
    return writer


async def test_role_is_assumed_with_the_external_id_and_used_for_kinesis(
    stack: Stack, stream: str
) -> None:
    """auth.role_arn + external_id: AssumeRole on the endpoint's STS, then Kinesis
    calls signed with the temporary credentials (ASIA...), not the base keys."""
    async with KinesisFaultProxy(stack.kinesis_endpoint) as proxy:
        assert proxy.url is not None
        auth = {
            "access_key_id": "AKIABASEKEY000000000",
            "secret_access_key": "base-secret",
            "role_arn": "arn:aws:iam::123456789012:role/kinesis-writer",
            "external_id": "ext-42",
        }
        writer = await role_writer(stream, proxy, auth)
        try:
            outcomes = await writer.put_all([Record(b"hello", "k1"), Record(b"again", "k2")])
        finally:
            await writer.close()
    assert all(o.accepted for o in outcomes)
    assume = [r for r in proxy.seen if r.form.get("Action") == ["AssumeRole"]]
    assert len(assume) == 1, "assumed once, reused while valid"
    assert assume[0].form["ExternalId"] == ["ext-42"]
    assert assume[0].form["RoleArn"] == ["arn:aws:iam::123456789012:role/kinesis-writer"]
    assert assume[0].access_key_id == "AKIABASEKEY000000000", "STS called with the base keys"
    kinesis_calls = [r for r in proxy.seen if r.target is not None]
    assert kinesis_calls
    assert all(r.access_key_id and r.access_key_id.startswith("ASIA") for r in kinesis_calls)


async def test_role_credentials_are_renewed_before_they_expire(
    stack: Stack, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials that expire within botocore's 15-minute window are renewed on use."""
    monkeypatch.setattr("worker.kinesis._transport.ROLE_SESSION_SECONDS", 900)
    # No keys in the configuration: the base credentials come from the default chain.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-environment")
    async with KinesisFaultProxy(stack.kinesis_endpoint) as proxy:
        auth = {"role_arn": "arn:aws:iam::123456789012:role/kinesis-writer"}
        writer = await role_writer(stream, proxy, auth)
        try:
            for i in range(3):
                assert (await writer.put_all([Record(b"x", f"k{i}")]))[0].accepted
        finally:
            await writer.close()
    keys = [r.access_key_id for r in proxy.seen if r.target is not None]
    assert sum(1 for r in proxy.seen if r.form.get("Action") == ["AssumeRole"]) >= 2
    assert len(set(keys)) >= 2, "later calls signed with renewed credentials"
    assume = [r for r in proxy.seen if r.form.get("Action") == ["AssumeRole"]]
    assert assume[0].access_key_id == "AKIAFROMENVIRONMENT0"
