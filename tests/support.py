"""Helpers shared by the unit and integration tests.

The local stack and its clients (Stack, admin_call, wait_active), the worker as
a child process (WorkerProcess), producing and reading Kafka (produce,
consume_all), the event bodies of the contract (qualification, profile_update),
reading a Kinesis stream (StreamReader), the fault proxy in a thread
(ProxyThread), a destination for the Kinesis code alone (destination_settings),
this process's metrics (metric_value) and promtool (prometheus_tool).

The integration tests' harness, a worker deployed with its topics and streams,
is tests/integration/harness.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY

from worker.settings import DestinationSettings

LOCAL_AWS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}

# The keys of the local endpoint (moto takes any) in a destination's `auth`.
LOCAL_AUTH = {"access_key_id": "testing", "secret_access_key": "testing"}

# The identity map of the record on the seed page (the Adobe documentation's example).
SEED_IDENTITY_MAP: dict[str, Any] = {
    "ecid": [
        {"id": "14575006536349286404619648085736425115"},
        {"id": "66478888669296734530114754794777368480"},
    ],
    "email_lc_sha256": [
        {"id": "655332b5fa2aea4498bf7a290cff017cb4"},
        {"id": "66baf76ef9de8b42df8903f00e0e3dc0b7"},
    ],
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


def metric_value(name: str, **labels: str) -> float:
    """A sample of this process's Prometheus registry; 0 when the series does not exist."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine to completion from sync code, also inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def destination_settings(
    name: str, stream: str, endpoint_url: str | None, auth: dict[str, Any] | None = None
) -> DestinationSettings:
    """A destination for the worker's Kinesis code alone (no pipeline): one segment "s",
    ``auth`` or the local endpoint's keys."""
    return DestinationSettings.model_validate(
        {
            "name": name,
            "stream": stream,
            "region": "us-east-1",
            "endpoint_url": endpoint_url,
            "auth": LOCAL_AUTH if auth is None else auth,
            "segments": [{"id": "s"}],
        }
    )


def wait_active(client: Any, stream: str, timeout: float = 30) -> None:
    """Waits until a Kinesis stream just created is ACTIVE."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = client.describe_stream_summary(StreamName=stream)
        if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.2)
    pytest.fail(f"stream {stream} not ACTIVE after {timeout:.0f}s")


# -- running the worker for integration tests -------------------------------------------


REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class WorkerProcess:
    """`python -m worker run` as a child process, as users run it."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        name: str = "worker",
        data_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.data_dir = data_dir or workdir / f"{name}-data"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout: float = 90) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "run",
                "--config",
                str(self.config_path),
                "--web-port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if wait_ready:
            self.wait_ready(timeout)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
                return int(reply.status), bytes(reply.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def wait_ready(self, timeout: float = 90) -> float:
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            try:
                status, _ = self.get("/readyz")
                if status == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, timeout: float = 30) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return int(code)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def repairs(self) -> list[str]:
        """Log lines of the last-resort repairs (worker.faust.repair): a hole
        replayed or the fetch watchdog firing. None is expected."""
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace")
        return [
            line
            for line in text.splitlines()
            if '"logger":"worker.faust.repair"' in line and '"level":"warning"' in line
        ]

    def log(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def produce(
    bootstrap: str, messages: Sequence[tuple[str, bytes | None, bytes | None]]
) -> None:
    """Sends (topic, key, value) in order and waits for the broker's acks."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(t, key=k, value=v) for t, k, v in messages]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def consume_all(bootstrap: str, topic: str, expected: int, wait_s: float = 30) -> list[Any]:
    """Reads `expected` messages from the start of a topic (no group)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    got: list[Any] = []
    try:
        deadline = time.monotonic() + wait_s
        while len(got) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for messages in batch.values():
                got.extend(messages)
    finally:
        await consumer.stop()
    return got


def qualification(
    profile_id: str,
    segment_id: str,
    status: str,
    when: str,
    identity_map: dict[str, Any] | None = None,
) -> bytes:
    body: dict[str, Any] = {
        "profileId": profile_id,
        "segmentId": segment_id,
        "status": status,
        "qualificationTime": when,
    }
    if identity_map is not None:
        body["identityMap"] = identity_map
    return orjson.dumps(body)


def profile_update(
    profile_id: str,
    attributes: dict[str, Any] | None = None,
    identity_map: dict[str, Any] | None = None,
    when: str = "2020-05-25T20:00:00Z",
) -> bytes:
    body: dict[str, Any] = {"profileId": profile_id, "updateTime": when}
    if attributes is not None:
        body["attributes"] = attributes
    if identity_map is not None:
        body["identityMap"] = identity_map
    return orjson.dumps(body)


class StreamReader:
    """Reads a Kinesis stream's shards incrementally; records grouped by partition key."""

    def __init__(self, client: Any, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.iterators: dict[str, str | None] = {}
        self.records: list[tuple[str, dict[str, Any]]] = []

    def poll(self) -> None:
        for shard in self.client.list_shards(StreamName=self.stream)["Shards"]:
            shard_id = shard["ShardId"]
            if shard_id not in self.iterators:
                self.iterators[shard_id] = self.client.get_shard_iterator(
                    StreamName=self.stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
            iterator = self.iterators[shard_id]
            while iterator:
                page = self.client.get_records(ShardIterator=iterator, Limit=10_000)
                self.records.extend(
                    (r["PartitionKey"], orjson.loads(r["Data"])) for r in page["Records"]
                )
                iterator = page.get("NextShardIterator")
                self.iterators[shard_id] = iterator
                if not page["Records"]:
                    break

    def for_key(self, key: str) -> list[dict[str, Any]]:
        return [record for k, record in self.records if k == key]

    def wait_for(self, key: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            found = self.for_key(key)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


class ProxyThread:
    """A KinesisFaultProxy on its own event loop in a thread, for sync tests."""

    def __init__(self, upstream: str) -> None:
        import threading

        from tests.faults.kinesis_proxy import KinesisFaultProxy

        self.proxy = KinesisFaultProxy(upstream)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.url: str = asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PROMETHEUS_HINT = (
    "run 'make tools' (deploy/local/prometheus.sh install) or set PROMTOOL to a promtool"
)


def prometheus_tool(name: str) -> Path:
    """The path of Debian's ``prometheus`` or ``promtool`` as the repo installs it.

    ``PROMTOOL`` may name a promtool; the other binary is then looked up next to it.
    Fails (never skips) when it is missing.
    """
    explicit = os.environ.get("PROMTOOL")
    if explicit:
        folder = Path(explicit).parent
    else:
        found = subprocess.run(
            ["bash", str(REPO / "deploy" / "local" / "prometheus.sh"), "path"],
            capture_output=True,
            text=True,
            check=False,
        )
        if found.returncode != 0:
            pytest.fail(
                f"{name} not found: {found.stderr.strip()}; {PROMETHEUS_HINT}", pytrace=False
            )
        folder = Path(found.stdout.strip())
    path = Path(explicit) if explicit and name == "promtool" else folder / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{name} not found at {path}; {PROMETHEUS_HINT}", pytrace=False)
    return path


class FakeClock:
    """A clock for unit tests: returns ``now``; ``advance`` moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
