"""Delivery metrics (worker/metrics.py): series per destination and shard, and no
profile data in any label."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from prometheus_client import REGISTRY, generate_latest

from tests.support import metric_value
from worker import metrics
from worker.kinesis import CallReport, KinesisWriter, PutReply, StreamSummary, WriterConfig
from worker.pipeline import BatchProcessor, Destination, InputMessage
from worker.settings import Settings

THROTTLED = "ProvisionedThroughputExceededException"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_call_report_becomes_per_destination_and_per_shard_series() -> None:
    name = unique("dest")
    observer = metrics.DeliveryMetrics(name, "the-stream", "eu-west-1")
    observer.limits(1000, 1048576)
    assert metric_value(
        "kd_destination_info", destination=name, stream="the-stream", region="eu-west-1"
    )
    assert metric_value("kd_shard_limit_records_per_second", destination=name) == 1000
    # Known label sets exist at 0 before anything happened.
    assert (
        REGISTRY.get_sample_value("kd_put_records_total", {"destination": name, "result": "failed"})
        == 0
    )

    observer.call_started()
    assert metric_value("kd_put_in_flight", destination=name) == 1
    report = CallReport(records=5, size=500, elapsed=0.02, retried=2)
    report.accepted_by_shard.update({"shard-0": 2, "shard-1": 1})
    report.accepted_bytes_by_shard.update({"shard-0": 200, "shard-1": 100})
    report.failed_by_code.update({THROTTLED: 1, "InternalFailure": 1})
    report.throttled_by_shard.update({"shard-1": 1})
    observer.call_done(report)

    assert metric_value("kd_put_in_flight", destination=name) == 0
    assert metric_value("kd_put_records_total", destination=name, result="accepted") == 3
    assert metric_value("kd_put_records_total", destination=name, result="failed") == 2
    assert metric_value("kd_put_errors_total", destination=name, code=THROTTLED) == 1
    assert metric_value("kd_put_errors_total", destination=name, code="InternalFailure") == 1
    assert metric_value("kd_throttles_total", destination=name, shard="shard-1") == 1
    assert metric_value("kd_shard_records_total", destination=name, shard="shard-0") == 2
    assert metric_value("kd_shard_bytes_total", destination=name, shard="shard-1") == 100
    assert metric_value("kd_retries_total", destination=name) == 2
    assert metric_value("kd_put_batch_records_count", destination=name) == 1
    assert metric_value("kd_put_batch_records_sum", destination=name) == 5
    assert metric_value("kd_put_batch_bytes_sum", destination=name) == 500
    assert metric_value("kd_put_records_seconds_count", destination=name) == 1
    assert metric_value("kd_last_successful_put_timestamp_seconds", destination=name) > 1.7e9


def test_a_call_with_nothing_accepted_leaves_the_last_success_alone() -> None:
    name = unique("dest")
    observer = metrics.DeliveryMetrics(name, "s", "us-east-1")
    observer.call_started()
    report = CallReport(records=1, size=10, elapsed=0.01, retried=0, call_error="InternalFailure")
    report.failed_by_code["InternalFailure"] = 1
    observer.call_done(report)
    assert (
        REGISTRY.get_sample_value("kd_last_successful_put_timestamp_seconds", {"destination": name})
        is None
    )
    assert metric_value("kd_put_errors_total", destination=name, code="InternalFailure") == 1


def test_writable_shards_rate_wait_and_pending() -> None:
    name = unique("dest")
    observer = metrics.DeliveryMetrics(name, "s", "us-east-1")
    assert metric_value("kd_stream_writable", destination=name) == 0
    observer.writable_changed(True, None)
    observer.shards_listed(4)
    observer.rate_limited(0.25)
    observer.rate_limited(0.5)
    observer.pending(7)
    assert metric_value("kd_stream_writable", destination=name) == 1
    assert metric_value("kd_stream_shards", destination=name) == 4
    assert metric_value("kd_rate_limit_wait_seconds_total", destination=name) == 0.75
    assert metric_value("kd_pending_records", destination=name) == 7


# -- no profile data in any label ------------------------------------------------------------


class _Transport:
    """Accepts all but the first record of each call once, so failures are reported too."""

    def __init__(self) -> None:
        self.failed_once: set[bytes] = set()

    async def put_records(
        self, stream: str, records: Sequence[tuple[bytes, str]]
    ) -> list[PutReply]:
        replies = []
        for data, _ in records:
            if data not in self.failed_once:
                self.failed_once.add(data)
                replies.append(PutReply(error_code=THROTTLED, error_message="slow down"))
            else:
                replies.append(PutReply(shard_id="shardId-000000000001", sequence_number="1"))
        return replies

    async def describe_stream(self, stream: str) -> StreamSummary:
        return StreamSummary("ACTIVE", 1, 1024 * 1024)

    async def list_shards(self, stream: str) -> list[dict[str, Any]]:
        return [
            {
                "ShardId": "shardId-000000000001",
                "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str(2**128 - 1)},
                "SequenceNumberRange": {"StartingSequenceNumber": "0"},
            }
        ]

    async def close(self) -> None:
        pass


class _Tables:
    def __init__(self) -> None:
        self.data: dict[tuple[str, str], Any] = {}

    def get_profile(self, profile_id: str, scope: Any) -> Any:
        return self.data.get(("p", profile_id))

    def get_memberships(self, profile_id: str, scope: Any) -> Any:
        return self.data.get(("m", profile_id))

    def put_profile(self, profile_id: str, value: Any, scope: Any) -> None:
        self.data[("p", profile_id)] = value

    def put_memberships(self, profile_id: str, value: Any, scope: Any) -> None:
        self.data[("m", profile_id)] = value

    async def flush(self) -> None:
        pass


class _Letters:
    async def send(self, key: bytes | None, value: bytes) -> None:
        pass


async def test_no_profile_id_identity_or_attribute_value_reaches_a_label() -> None:
    profile, identity, value = "PROFILE-7731", "IDENTITY-4412", "ATTRIBUTE-9090"
    settings = Settings.model_validate(
        {
            "kafka": {"qualifications_topic": "q", "profiles_topic": "p"},
            "destinations": [
                {
                    "name": unique("labels"),
                    "stream": "s",
                    "region": "us-east-1",
                    "partition_key_namespaces": ["ecid"],
                    "segments": [{"id": "seg-1"}],
                    "attributes": ["person.name"],
                }
            ],
        }
    )
    destination = settings.destinations[0]
    writer = KinesisWriter(
        "s",
        _Transport(),
        WriterConfig(backoff_base_s=0, backoff_max_s=0),
        metrics.DeliveryMetrics(destination.name, destination.stream, destination.region),
    )
    await writer.start()
    processor = BatchProcessor(settings, [Destination(destination, writer)], _Tables(), _Letters())
    ids = {"ecid": [{"id": identity}]}
    events = [
        ("p", {"profileId": profile, "attributes": {"person": {"name": value}},
               "identityMap": ids}),
        ("q", {"profileId": profile, "segmentId": "seg-1", "status": "realized",
               "qualificationTime": "2024-01-01T00:00:00Z"}),
        ("q", {"profileId": profile, "segmentId": value, "status": "realized",
               "qualificationTime": "2024-01-01T00:00:00Z"}),
        ("q", {"profileId": profile, "segmentId": "seg-1", "status": value,
               "qualificationTime": "2024-01-01T00:00:00Z"}),
    ]  # fmt: skip
    messages = [
        InputMessage(topic, 0, offset, profile.encode(), orjson.dumps(body), None)
        for offset, (topic, body) in enumerate(events)
    ]
    messages.append(InputMessage("q", 0, 9, value.encode(), b"{not json " + value.encode(), None))
    report = await processor.process(messages)
    assert report.exports == 1
    assert report.dead_letters == 2
    exposed = generate_latest(REGISTRY).decode()
    for secret in (profile, identity, value):
        assert secret not in exposed
