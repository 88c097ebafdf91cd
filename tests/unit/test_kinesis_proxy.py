"""The fault-injecting Kinesis proxy against a tiny fake upstream: each fault mode and the merge."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aioboto3
import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.faults.kinesis_proxy import (
    INTERNAL_FAILURE,
    JSON_CONTENT_TYPE,
    PUT_RECORDS_TARGET,
    THROTTLED,
    Counters,
    KinesisFaultProxy,
)
from tests.support import destination_settings
from worker.kinesis import AioBotoTransport, TransportError

UPSTREAM_FAIL_PREFIX = "upfail-"  # keys the fake upstream itself throttles
DESCRIBE_TARGET = "Kinesis_20131202.DescribeStreamSummary"


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeUpstream:
    """A Kinesis that numbers what it accepts and throttles keys starting with upfail-."""

    seen: list[Seen] = field(default_factory=list)
    stored: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def put_calls(self) -> list[list[dict[str, Any]]]:
        return [
            orjson.loads(s.body)["Records"]
            for s in self.seen
            if s.headers.get("X-Amz-Target") == PUT_RECORDS_TARGET
        ]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), body))
        target = request.headers.get("X-Amz-Target", "")
        if target == DESCRIBE_TARGET:
            summary = {"StreamStatus": "ACTIVE", "OpenShardCount": 2, "MaxRecordSizeInKiB": 2048}
            return json_reply({"StreamDescriptionSummary": summary})
        if target != PUT_RECORDS_TARGET:
            return json_reply({"echo": target})
        payload = orjson.loads(body)
        if payload["StreamName"] == "missing":
            error = {"__type": "ResourceNotFoundException", "message": "no stream"}
            return json_reply(error, status=400)
        entries: list[dict[str, Any]] = []
        failed = 0
        for record in payload["Records"]:
            if record["PartitionKey"].startswith(UPSTREAM_FAIL_PREFIX):
                failed += 1
                entries.append({"ErrorCode": THROTTLED, "ErrorMessage": "upstream"})
            else:
                self.stored.append(record)
                entries.append(
                    {"SequenceNumber": str(len(self.stored)), "ShardId": "shardId-000000000000"}
                )
        return json_reply({"FailedRecordCount": failed, "Records": entries})


def json_reply(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type=JSON_CONTENT_TYPE)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def proxy(upstream: FakeUpstream) -> AsyncIterator[KinesisFaultProxy]:
    async with KinesisFaultProxy(upstream.url, seed=1234) as running:
        yield running


def make_records(count: int, prefix: str = "k", size: int = 8) -> list[dict[str, str]]:
    return [
        {
            "Data": base64.b64encode(f"{i:0{size}d}".encode()).decode(),
            "PartitionKey": f"{prefix}{i}",
        }
        for i in range(count)
    ]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def call(
    url: str,
    target: str = PUT_RECORDS_TARGET,
    payload: dict[str, Any] | None = None,
    *,
    body: bytes | None = None,
    content_type: str = JSON_CONTENT_TYPE,
    path: str = "/",
) -> Reply:
    data = body if body is not None else orjson.dumps(payload or {})
    headers = {
        "X-Amz-Target": target,
        "Content-Type": content_type,
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/kinesis/aws4",
        "X-Amz-Date": "20250101T000000Z",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, data=data, headers=headers) as reply,
    ):
        return Reply(reply.status, dict(reply.headers), await reply.read())


def put(records: list[dict[str, str]], stream: str = "s") -> dict[str, Any]:
    return {"StreamName": stream, "Records": records}


async def put_through(
    proxy: KinesisFaultProxy, records: int | list[dict[str, str]], stream: str = "s"
) -> Reply:
    """A PutRecords call through the proxy: these records, or that many of make_records."""
    assert proxy.url is not None
    if isinstance(records, int):
        records = make_records(records)
    return await call(proxy.url, payload=put(records, stream))


# -- forwarding ------------------------------------------------------------------------------


async def test_forwards_put_records_untouched_without_faults(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    assert proxy.url is not None
    records = make_records(5)
    body = orjson.dumps(put(records))
    reply = await call(proxy.url, body=body, path="/some/path?a=1&b=two")

    assert reply.status == 200
    assert reply.json() == {
        "FailedRecordCount": 0,
        "Records": [
            {"SequenceNumber": str(i + 1), "ShardId": "shardId-000000000000"} for i in range(5)
        ],
    }
    [seen] = upstream.seen
    assert (seen.method, seen.path_qs, seen.body) == ("POST", "/some/path?a=1&b=two", body)
    assert seen.headers["X-Amz-Target"] == PUT_RECORDS_TARGET
    assert seen.headers["Content-Type"] == JSON_CONTENT_TYPE
    assert seen.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert seen.headers["X-Amz-Date"] == "20250101T000000Z"
    assert proxy.counters == Counters(
        calls=1, put_records_calls=1, records_received=5, records_forwarded=5
    )


async def test_other_calls_are_untouched_by_every_fault_but_the_outage(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    assert proxy.url is not None
    f = proxy.faults
    f.throttle_share = f.error_5xx_share = f.drop_share = 1.0
    f.latency_s = 5.0
    started = time.monotonic()
    for target in (DESCRIBE_TARGET, "Kinesis_20131202.ListShards"):
        reply = await call(proxy.url, target, {"StreamName": "s"})
        assert reply.status == 200
        assert reply.json() == (
            {"echo": target}
            if target != DESCRIBE_TARGET
            else {
                "StreamDescriptionSummary": {
                    "StreamStatus": "ACTIVE",
                    "OpenShardCount": 2,
                    "MaxRecordSizeInKiB": 2048,
                }
            }
        )
    assert time.monotonic() - started < 2.0, "no latency on non-PutRecords calls"
    assert len(upstream.seen) == 2
    assert proxy.counters.put_records_calls == 0

    f.outage_for(30)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(proxy.url, DESCRIBE_TARGET, {"StreamName": "s"})
    assert len(upstream.seen) == 2


# -- per-record faults and the merge -----------------------------------------------------------


async def test_full_throttle_sends_nothing_upstream(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    proxy.faults.throttle_share = 1.0
    reply = await put_through(proxy, 7)

    assert reply.status == 200
    assert reply.headers["Content-Type"] == JSON_CONTENT_TYPE
    body = reply.json()
    assert body["FailedRecordCount"] == 7
    assert [entry["ErrorCode"] for entry in body["Records"]] == [THROTTLED] * 7
    assert upstream.seen == []
    assert proxy.counters.records_throttled == 7
    assert proxy.counters.records_forwarded == 0


async def test_partial_failures_are_withheld_and_merged_in_order(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    proxy.faults.throttle_share = 0.3
    proxy.faults.internal_failure_share = 0.2
    records = make_records(200)
    # Two keys the fake upstream itself throttles: their failures must merge in as well.
    records[10]["PartitionKey"] = UPSTREAM_FAIL_PREFIX + "a"
    records[150]["PartitionKey"] = UPSTREAM_FAIL_PREFIX + "b"
    reply = await put_through(proxy, records)

    assert reply.status == 200
    body = reply.json()
    entries = body["Records"]
    assert len(entries) == 200
    proxy_failed = {
        i
        for i, entry in enumerate(entries)
        if entry.get("ErrorCode") in (THROTTLED, INTERNAL_FAILURE)
        and entry.get("ErrorMessage") != "upstream"
    }
    codes = [entries[i]["ErrorCode"] for i in proxy_failed]
    # 0.3 * 200 and 0.2 * 200 are whole: the counts are exact.
    assert codes.count(THROTTLED) == 60
    assert codes.count(INTERNAL_FAILURE) == 40

    [sent] = upstream.put_calls()
    kept = [r for i, r in enumerate(records) if i not in proxy_failed]
    assert sent == kept, "upstream got exactly the records not failed, in their order"
    assert orjson.loads(upstream.seen[0].body)["StreamName"] == "s"

    # Each accepted entry is the upstream's entry for that very record.
    by_sequence = {str(n + 1): record for n, record in enumerate(upstream.stored)}
    upstream_failed = 0
    for i, entry in enumerate(entries):
        if i in proxy_failed:
            assert "SequenceNumber" not in entry
        elif entry.get("ErrorMessage") == "upstream":
            upstream_failed += 1
            assert records[i]["PartitionKey"].startswith(UPSTREAM_FAIL_PREFIX)
        else:
            assert by_sequence[entry["SequenceNumber"]] == records[i]
    assert upstream_failed == sum(1 for i in (10, 150) if i not in proxy_failed), (
        "upstream failures kept at their places"
    )
    assert body["FailedRecordCount"] == 100 + upstream_failed
    assert sum(1 for entry in entries if "ErrorCode" in entry) == body["FailedRecordCount"]
    counters = proxy.counters
    assert (counters.records_throttled, counters.records_failed) == (60, 40)
    assert (counters.records_received, counters.records_forwarded) == (200, 100)


async def test_fractional_shares_round_at_random_around_the_share(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    proxy.faults.throttle_share = 0.25
    total = failed = 0
    for _ in range(200):
        body = (await put_through(proxy, 3)).json()
        total += 3
        failed += body["FailedRecordCount"]
        assert failed == proxy.counters.records_throttled
    assert 0.18 < failed / total < 0.32
    assert proxy.counters.records_forwarded == total - failed
    assert len(upstream.stored) == total - failed


async def test_the_seed_makes_the_choice_repeatable(upstream: FakeUpstream) -> None:
    chosen: list[list[int]] = []
    for _ in range(2):
        async with KinesisFaultProxy(upstream.url, seed=99) as proxy:
            proxy.faults.throttle_share = 0.4
            body = (await put_through(proxy, 50)).json()
            chosen.append([i for i, e in enumerate(body["Records"]) if "ErrorCode" in e])
    assert chosen[0] == chosen[1]
    assert len(chosen[0]) == 20


async def test_upstream_errors_pass_through(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    proxy.faults.throttle_share = 0.5
    reply = await put_through(proxy, 4, stream="missing")
    assert reply.status == 400
    assert reply.json()["__type"] == "ResourceNotFoundException"
    assert len(upstream.put_calls()[0]) == 2


async def test_on_call_changes_faults_at_an_exact_point(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:

    def throttle_from_the_third_call(running: KinesisFaultProxy) -> None:
        running.faults.throttle_share = 1.0 if running.counters.calls >= 3 else 0.0

    proxy.on_call = throttle_from_the_third_call
    failed = [(await put_through(proxy, 2)).json()["FailedRecordCount"]]
    failed += [(await put_through(proxy, 2)).json()["FailedRecordCount"]]
    failed += [(await put_through(proxy, 2)).json()["FailedRecordCount"]]
    assert failed == [0, 0, 2]
    assert len(upstream.stored) == 4


# -- whole-call faults -------------------------------------------------------------------------


async def test_5xx_answers_without_forwarding(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    proxy.faults.error_5xx_share = 1.0
    statuses: dict[int, str] = {}
    for _ in range(20):
        reply = await put_through(proxy, 3)
        statuses[reply.status] = reply.json()["__type"]
    assert statuses == {500: "InternalFailure", 503: "ServiceUnavailable"}
    assert upstream.seen == []
    assert proxy.counters.errors_5xx == 20
    assert proxy.counters.records_forwarded == 0


async def test_latency_delays_the_call(proxy: KinesisFaultProxy, upstream: FakeUpstream) -> None:
    proxy.faults.latency_s = 0.3
    started = time.monotonic()
    reply = await put_through(proxy, 2)
    assert reply.status == 200
    assert time.monotonic() - started >= 0.3
    assert len(upstream.stored) == 2


async def test_drop_forwards_then_disconnects(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    proxy.faults.drop_share = 1.0
    proxy.faults.throttle_share = 0.5
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await put_through(proxy, 10)
    assert len(upstream.stored) == 5, "the records landed although the client saw an error"
    assert proxy.counters.connections_dropped == 1
    assert proxy.counters.records_in_dropped_calls == 5
    proxy.faults.drop_share = 0.0
    assert (await put_through(proxy, 2)).status == 200


async def test_drop_every_nth_call_whatever_the_random_draws(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    proxy.faults.drop_every = 3
    statuses = []
    for _ in range(6):
        try:
            statuses.append((await put_through(proxy, 1)).status)
        except aiohttp.ServerDisconnectedError:
            statuses.append(0)
    assert statuses == [200, 200, 0, 200, 200, 0]
    assert proxy.counters.connections_dropped == 2


@pytest.mark.parametrize("mode", ["refuse", "503"])
async def test_outage_refuses_everything_until_it_ends(
    proxy: KinesisFaultProxy, upstream: FakeUpstream, mode: str
) -> None:
    assert proxy.url is not None
    proxy.faults.outage_mode = "refuse" if mode == "refuse" else "503"
    proxy.faults.outage_for(0.5)
    for target in (PUT_RECORDS_TARGET, DESCRIBE_TARGET):
        if mode == "refuse":
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await call(proxy.url, target, put(make_records(3)))
        else:
            reply = await call(proxy.url, target, put(make_records(3)))
            assert (reply.status, reply.json()["__type"]) == (503, "ServiceUnavailable")
    assert upstream.seen == []
    assert proxy.counters.outage_refused == 2
    await asyncio.sleep(max(0.0, proxy.faults.outage_until - time.monotonic()))
    assert (await put_through(proxy, 3)).status == 200
    assert len(upstream.stored) == 3


# -- the wire format botocore uses -------------------------------------------------------------


async def test_non_json_body_is_refused_only_when_per_record_faults_are_on(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    assert proxy.url is not None
    cbor_ish = b"\xbf\x6aStreamName\x61s\xff"
    reply = await call(proxy.url, body=cbor_ish, content_type="application/x-amz-cbor-1.1")
    assert reply.status == 500  # the fake upstream cannot read it either; the proxy forwarded it
    assert upstream.seen[-1].body == cbor_ish

    proxy.faults.throttle_share = 0.5
    reply = await call(proxy.url, body=cbor_ish, content_type="application/x-amz-cbor-1.1")
    assert (reply.status, reply.json()["__type"]) == (400, "ProxyCannotParse")
    assert len(upstream.seen) == 1
    assert proxy.counters.unparsable == 2


async def test_bodies_over_a_mebibyte_pass(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    proxy.faults.throttle_share = 0.5
    records = make_records(5, size=1024 * 1024)  # 5 MiB of data: the PutRecords maximum
    reply = await put_through(proxy, records)
    assert reply.status == 200
    assert reply.json()["FailedRecordCount"] in (2, 3)


async def test_botocore_speaks_json_and_reads_the_merged_reply(
    proxy: KinesisFaultProxy, upstream: FakeUpstream
) -> None:
    proxy.faults.throttle_share = 0.5
    session = aioboto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    async with session.client("kinesis", endpoint_url=proxy.url) as client:
        reply = await client.put_records(
            StreamName="s",
            Records=[{"Data": f"d{i}".encode(), "PartitionKey": f"k{i}"} for i in range(10)],
        )
    [seen] = upstream.seen
    assert seen.headers["Content-Type"] == JSON_CONTENT_TYPE, "botocore uses JSON 1.1, not CBOR"
    assert seen.headers["X-Amz-Target"] == PUT_RECORDS_TARGET
    assert seen.headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert reply["FailedRecordCount"] == 5
    failed = [i for i, entry in enumerate(reply["Records"]) if "ErrorCode" in entry]
    sent = [base64.b64decode(r["Data"]) for r in orjson.loads(seen.body)["Records"]]
    assert sent == [f"d{i}".encode() for i in range(10) if i not in failed]


@pytest.fixture
async def transport(proxy: KinesisFaultProxy) -> AsyncIterator[AioBotoTransport]:
    wire = AioBotoTransport(destination_settings("proxy", "s", proxy.url).transport())
    yield wire
    await wire.close()


BATCH = [(f"d{i}".encode(), f"k{i}") for i in range(4)]


async def test_the_worker_transport_sees_each_fault_as_intended(
    proxy: KinesisFaultProxy, upstream: FakeUpstream, transport: AioBotoTransport
) -> None:
    summary = await transport.describe_stream("s")
    assert (summary.status, summary.max_record_bytes) == ("ACTIVE", 2048 * 1024)

    proxy.faults.internal_failure_share = 0.5
    replies = await transport.put_records("s", BATCH)
    assert sorted(r.error_code or "ok" for r in replies) == [INTERNAL_FAILURE] * 2 + ["ok"] * 2
    assert len(upstream.stored) == 2
    proxy.faults.clear()

    proxy.faults.error_5xx_share = 1.0
    with pytest.raises(TransportError) as raised:
        await transport.put_records("s", BATCH)
    assert raised.value.code in ("InternalFailure", "ServiceUnavailable")
    assert not raised.value.fatal
    proxy.faults.clear()

    proxy.faults.drop_share = 1.0
    with pytest.raises(TransportError) as raised:
        await transport.put_records("s", BATCH)
    assert (raised.value.code, raised.value.fatal) == ("ConnectionClosedError", False)
    # Each dropped call landed upstream (botocore may have made more than one: see below).
    assert len(upstream.stored) == 2 + 4 * proxy.counters.connections_dropped
    assert proxy.counters.records_in_dropped_calls == 4 * proxy.counters.connections_dropped
    proxy.faults.clear()

    stored = len(upstream.stored)
    for mode in ("refuse", "503"):
        proxy.faults.outage_mode = "refuse" if mode == "refuse" else "503"
        proxy.faults.outage_for(30)
        with pytest.raises(TransportError) as raised:
            await transport.put_records("s", BATCH)
        assert not raised.value.fatal
        proxy.faults.clear()
    assert len(upstream.stored) == stored


@pytest.mark.parametrize("fault", ["5xx", "drop", "outage"])
async def test_the_transport_makes_one_attempt_per_call(
    proxy: KinesisFaultProxy, upstream: FakeUpstream, transport: AioBotoTransport, fault: str
) -> None:
    if fault == "5xx":
        proxy.faults.error_5xx_share = 1.0
    elif fault == "drop":
        proxy.faults.drop_share = 1.0
    else:
        proxy.faults.outage_for(30)
    with pytest.raises(TransportError):
        await transport.put_records("s", BATCH)
    assert proxy.counters.calls == 1, "the writer retries, in order; botocore must not"
