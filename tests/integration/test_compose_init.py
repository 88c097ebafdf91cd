"""deploy/compose/init.py, the compose stack's one-shot set-up, on the real local stack.

It must create co-partitioned input topics and the stream, be safe to run
again, and refuse an existing topic with another partition count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support import LOCAL_AWS, REPO, Stack, admin_call, run_sync

INIT = REPO / "deploy" / "compose" / "init.py"


@pytest.fixture
def names(stack: Stack, unique_name: str) -> Iterator[tuple[list[str], str]]:
    topics = [f"{unique_name}-q", f"{unique_name}-p"]
    stream = f"{unique_name}-s"
    yield topics, stream
    existing = set(run_sync(admin_call(stack.kafka_bootstrap, lambda a: a.list_topics())))
    if created := [t for t in topics if t in existing]:
        run_sync(admin_call(stack.kafka_bootstrap, lambda a: a.delete_topics(created)))
    client = stack.kinesis()
    if stream in client.list_streams().get("StreamNames", []):
        client.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)


def run_init(
    stack: Stack, topics: list[str], stream: str, partitions: int
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KD_", "AWS_"))}
    env.update(
        INIT_KAFKA_BOOTSTRAP=stack.kafka_bootstrap,
        INIT_TOPICS=",".join(topics),
        INIT_PARTITIONS=str(partitions),
        INIT_KINESIS_ENDPOINT=stack.kinesis_endpoint,
        INIT_STREAMS=stream,
        INIT_SHARDS="1",
        INIT_TIMEOUT_S="30",
        AWS_REGION=LOCAL_AWS["region_name"],
        AWS_ACCESS_KEY_ID=LOCAL_AWS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=LOCAL_AWS["aws_secret_access_key"],
    )
    return subprocess.run(
        [sys.executable, str(INIT)], env=env, capture_output=True, text=True, timeout=120
    )


def test_init_creates_topics_and_stream_and_can_run_again(
    stack: Stack, names: tuple[list[str], str]
) -> None:
    topics, stream = names
    first = run_init(stack, topics, stream, partitions=3)
    assert first.returncode == 0, first.stdout + first.stderr
    described = run_sync(admin_call(stack.kafka_bootstrap, lambda a: a.describe_topics(topics)))
    assert {d["topic"]: len(d["partitions"]) for d in described} == dict.fromkeys(topics, 3)
    summary = stack.kinesis().describe_stream_summary(StreamName=stream)
    assert summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE"

    again = run_init(stack, topics, stream, partitions=3)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "created" not in again.stdout, again.stdout


def test_init_refuses_topics_with_another_partition_count(
    stack: Stack, names: tuple[list[str], str]
) -> None:
    topics, stream = names
    assert run_init(stack, topics, stream, partitions=2).returncode == 0
    other = run_init(stack, topics, stream, partitions=4)
    assert other.returncode == 1, other.stdout + other.stderr
    assert "co-partitioned" in other.stderr, other.stderr
