"""Types and helpers the fixtures hand to tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
from aiokafka.admin import AIOKafkaAdminClient

LOCAL_AWS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}


@dataclass(frozen=True)
class Stack:
    kafka_bootstrap: str
    kinesis_endpoint: str

    def kinesis(self) -> Any:
        return boto3.client("kinesis", endpoint_url=self.kinesis_endpoint, **LOCAL_AWS)


async def admin_call(bootstrap: str, op: Callable[[AIOKafkaAdminClient], Any]) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        return await op(admin)
    finally:
        await admin.close()


TopicFactory = Callable[..., str]
StreamFactory = Callable[..., str]


T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine to completion from sync code, also inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
