"""Fixtures shared by unit and integration tests.

Integration tests talk to the real local stack (see deploy/local/stack.sh) at
KAFKA_BOOTSTRAP and KINESIS_ENDPOINT. When the stack cannot be reached they
fail with a message; they never skip.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import NewTopic

from tests.support import (
    Stack,
    StreamFactory,
    TopicFactory,
    admin_call,
    prometheus_tool,
    run_sync,
    wait_active,
)


@pytest.fixture(scope="session")
def stack() -> Stack:
    found = Stack(
        kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        kinesis_endpoint=os.environ.get("KINESIS_ENDPOINT", "http://127.0.0.1:4567"),
    )
    hint = "start the local stack with 'make stack-up' (or run 'make test')"
    try:
        run_sync(
            asyncio.wait_for(admin_call(found.kafka_bootstrap, lambda a: a.describe_cluster()), 20)
        )
    except Exception as exc:
        pytest.fail(f"Kafka broker not reachable at {found.kafka_bootstrap}: {exc!r}; {hint}")
    try:
        found.kinesis().list_streams()
    except Exception as exc:
        pytest.fail(f"Kinesis endpoint not reachable at {found.kinesis_endpoint}: {exc!r}; {hint}")
    return found


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name no other test uses: topic, stream and consumer-group names derive from it."""
    base = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name).strip("-").lower()[:40]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def kafka_topic(stack: Stack) -> Iterator[TopicFactory]:
    """Creates topics for one test and deletes them afterwards."""
    created: list[str] = []

    def create(name: str, partitions: int = 1, **config: str) -> str:
        topic = NewTopic(name, partitions, 1, topic_configs=config or None)
        run_sync(admin_call(stack.kafka_bootstrap, lambda a: a.create_topics([topic])))
        created.append(name)
        return name

    yield create
    if created:
        run_sync(admin_call(stack.kafka_bootstrap, lambda a: a.delete_topics(created)))


@pytest.fixture
def kinesis_stream(stack: Stack) -> Iterator[StreamFactory]:
    """Creates Kinesis streams for one test, waits until ACTIVE, deletes them afterwards."""
    client = stack.kinesis()
    created: list[str] = []

    def create(name: str, shards: int = 1) -> str:
        client.create_stream(StreamName=name, ShardCount=shards)
        created.append(name)
        wait_active(client, name)
        return name

    yield create
    for name in created:
        client.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Debian's promtool, installed by `make tools`."""
    return prometheus_tool("promtool")
