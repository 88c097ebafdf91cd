"""The integration tests' harness: the worker deployed on the local stack.

`Deployment` is one test's set-up: its input topics, dead-letter topic and
Kinesis streams, the worker configuration for them, the workers started on it
(`python -m worker run`), the events sent and the records read back. A test
that needs other destinations, partitions, Kafka security settings or runtime
keys says so in `Deployment(...)`, `config(...)` or `worker(...)`.

Below it: the segments and builders the tests share, checks of what arrived
(`entered_then_left`), of commits (`wait_committed_to_the_end`), the command
line (`cli`), and, for the tests where workers join and leave, a steady load
producer and a consumer-group monitor (`LoadProducer`, `GroupMonitor`).

The lower-level pieces (the stack, the worker process, producing, reading a
stream, the fault proxy, the event builders) are in tests/support.py, which the
unit tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from tests.support import (
    LOCAL_AUTH,
    REPO,
    Stack,
    StreamReader,
    WorkerProcess,
    admin_call,
    produce,
    qualification,
    run_sync,
    wait_active,
)

SEG_A = "7841ba61-23c1-4bb3-a495-00d3g5fe1e93"  # the seed page's exited segment
SEG_B = "59bd2fkd-3c48-4b18-bf56-4f5c5e6967ae"  # the seed page's existing segment
SEG_C = "c0ffee00-0000-4000-8000-second-only"
SEG_UNMAPPED = "deadbeef-0000-4000-8000-not-mapped"

# What differs between destinations, by the suffix of their stream's name
# (`<app_id>-<suffix>`); Deployment adds the stream, region, endpoint and keys.
PIPELINE_DESTINATIONS: dict[str, dict[str, Any]] = {
    "seed": {
        "name": "Seed page",
        "partition_key_namespaces": ["ecid", "email_lc_sha256"],
        "segments": [{"id": SEG_A}, {"id": SEG_B}],
        "attributes": ["person.email"],
    },
    "second": {
        "name": "Second",
        "include_segment_names": True,
        "include_segment_timestamps": True,
        "partition_key_namespaces": ["email_lc_sha256"],
        "segments": [
            {
                "id": SEG_B,
                "name": "Downloaded the white paper",
                "created_at": 1590000000000,
                "updated_at": 1590000001000,
                "mapping_created_at": 1590000002000,
                "mapping_updated_at": 1590000003000,
            },
            {"id": SEG_C, "name": "Second only"},
        ],
        "attributes": ["person.name.firstName", "loyalty.tier"],
    },
}

RUNTIME: dict[str, Any] = {
    "store": "memory://",
    "batch_linger_ms": 20,
    "session_timeout_ms": 6000,  # a killed worker's partitions move on quickly
}


def one_stream(name: str, segments: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One destination, stream `<app_id>-stream`: records keyed by ecid, with the email."""
    return {
        "stream": {
            "name": name,
            "partition_key_namespaces": ["ecid"],
            "segments": [{"id": segment} for segment in segments],
            "attributes": ["person.email"],
        }
    }


# The `report` fixture (conftest.py): report(name, figures, text).
Report = Callable[[str, Mapping[str, Any], str], None]


def unique(prefix: str) -> str:
    """A deployment name no other run uses: topics, streams and the group derive from it."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- the deployment ------------------------------------------------------------------------


class Deployment:
    """Topics, streams and a configuration for one worker set-up, and its workers.

    ``with Deployment(...) as deployment:`` creates the topics and streams and
    deletes them (and kills any worker left) at the end.
    """

    def __init__(
        self,
        stack: Stack,
        name: str,
        workdir: Path,
        partitions: int = 3,
        *,
        destinations: Mapping[str, Mapping[str, Any]] = PIPELINE_DESTINATIONS,
        shards: int = 2,
        runtime: Mapping[str, Any] | None = None,
        q_partitions: int | None = None,
        q_config: Mapping[str, str] | None = None,
        p_config: Mapping[str, str] | None = None,
    ) -> None:
        """``destinations``: stream suffix -> destination keys; ``runtime``: keys over
        RUNTIME for every worker; ``q_partitions``, ``q_config``, ``p_config``: the
        qualifications topic's partition count when it differs, topic configurations."""
        self.stack = stack
        self.name = name
        self.workdir = workdir
        self.partitions = partitions
        self.shards = shards
        self.destinations = [dict(destination) for destination in destinations.values()]
        self.runtime = {**RUNTIME, **(runtime or {})}
        self.q_partitions = q_partitions or partitions
        self.topic_configs = (q_config, p_config)
        self.q_topic = f"{name}-qualifications"
        self.p_topic = f"{name}-profiles"
        self.dlq_topic = f"{name}-dlq"
        self.streams = [f"{name}-{suffix}" for suffix in destinations]
        self.kinesis = stack.kinesis()
        self.readers = {s: StreamReader(self.kinesis, s) for s in self.streams}
        self.workers: list[WorkerProcess] = []
        self.sent = 0  # events sent since the last worker started

    def __enter__(self) -> Deployment:
        self.create()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.destroy()

    def config(
        self,
        *,
        kafka: Mapping[str, Any] | None = None,
        endpoint_url: str | None = None,
        **runtime: Any,
    ) -> dict[str, Any]:
        """The worker's configuration. ``kafka``: keys over the plaintext connection
        (security settings, another bootstrap); ``endpoint_url``: Kinesis through
        another endpoint (a fault proxy); ``runtime``: keys over the deployment's."""
        endpoint = endpoint_url or self.stack.kinesis_endpoint
        return {
            "app_id": self.name,
            "kafka": {
                "bootstrap_servers": self.stack.kafka_bootstrap,
                "qualifications_topic": self.q_topic,
                "profiles_topic": self.p_topic,
                "dlq_topic": self.dlq_topic,
                **(kafka or {}),
            },
            "destinations": [
                {
                    "stream": stream,
                    "region": "us-east-1",
                    "endpoint_url": endpoint,
                    "auth": dict(LOCAL_AUTH),
                    **copy.deepcopy(destination),
                }
                for stream, destination in zip(self.streams, self.destinations, strict=True)
            ],
            "runtime": {**self.runtime, **runtime},
        }

    def write_config(
        self, filename: str = "config.yaml", config: Mapping[str, Any] | None = None, **options: Any
    ) -> Path:
        """Writes ``config``, or ``self.config(**options)``, for the command line."""
        path = self.workdir / filename
        path.write_text(
            yaml.safe_dump(dict(config) if config is not None else self.config(**options))
        )
        return path

    def create(self) -> None:
        q_config, p_config = (dict(c) if c else None for c in self.topic_configs)
        topics = [
            NewTopic(self.q_topic, self.q_partitions, 1, topic_configs=q_config),
            NewTopic(self.p_topic, self.partitions, 1, topic_configs=p_config),
        ]
        run_sync(admin_call(self.stack.kafka_bootstrap, lambda a: a.create_topics(topics)))
        for stream in self.streams:
            self.kinesis.create_stream(StreamName=stream, ShardCount=self.shards)
        for stream in self.streams:
            wait_active(self.kinesis, stream)

    def destroy(self) -> None:
        """Kills the workers left; deletes the topics (input, dead-letter, Faust's
        changelogs: every topic named after the deployment) and the streams."""
        for worker in self.workers:
            worker.kill()

        async def delete(admin: Any) -> None:
            names = [t for t in await admin.list_topics() if t.startswith(self.name)]
            if names:
                await admin.delete_topics(names)

        run_sync(admin_call(self.stack.kafka_bootstrap, delete))
        for stream in self.streams:
            with contextlib.suppress(Exception):  # already gone, or never made
                self.kinesis.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)

    def worker(
        self,
        name: str = "worker",
        data_dir: Path | None = None,
        *,
        kafka: Mapping[str, Any] | None = None,
        endpoint_url: str | None = None,
        **runtime: Any,
    ) -> WorkerProcess:
        """A worker (not started) with its own config file, log and data dir, named
        after ``name``; ``kafka``, ``endpoint_url``, ``runtime`` as in config()."""
        config = self.config(kafka=kafka, endpoint_url=endpoint_url, **runtime)
        worker = WorkerProcess(config, self.workdir, name, data_dir)
        self.workers.append(worker)
        self.sent = 0
        return worker

    def send(self, *messages: tuple[str, str, bytes | None], timeout: float = 60) -> None:
        """(topic, profile id, value) in order; topic is "q" or "p".

        Kafka orders events within a partition of ONE topic; across the two
        topics the worker may read either first. So each run of messages to
        one topic is sent, then waited for (up to ``timeout``), before the next run.
        """
        topics = {"q": self.q_topic, "p": self.p_topic}
        run: list[tuple[str, bytes | None, bytes | None]] = []
        for position, (topic, key, value) in enumerate(messages):
            run.append((topics[topic], key.encode(), value))
            last = position == len(messages) - 1
            if last or messages[position + 1][0] != topic:
                self.send_raw(run)
                run = []
                if not last:
                    self.wait_consumed(timeout)

    def send_raw(self, messages: Sequence[tuple[str, bytes | None, bytes | None]]) -> None:
        """(topic, key, value) as they are, in order; counted for wait_consumed()."""
        run_sync(produce(self.stack.kafka_bootstrap, messages))
        self.sent += len(messages)

    def wait_consumed(self, timeout: float = 60) -> None:
        """Waits until the running worker counted every event sent since it started."""
        worker = self.workers[-1]
        deadline = time.monotonic() + timeout
        while worker.metric("kd_events_total") < self.sent:
            assert time.monotonic() < deadline, f"worker consumed too little:\n{worker.log()}"
            time.sleep(0.1)

    def records(self, stream: int, key: str, count: int, timeout: float = 30) -> list[Any]:
        return self.readers[self.streams[stream]].wait_for(key, count, timeout)

    def wait_keys(self, count: int, timeout: float, lost: str, interval: float = 0.2) -> None:
        """Waits until the first stream holds records of ``count`` keys; ``lost`` says
        what failed when it does not within ``timeout``."""
        reader = self.readers[self.streams[0]]
        deadline = time.monotonic() + timeout
        while len({k for k, _ in reader.records}) < count:
            assert time.monotonic() < deadline, lost
            reader.poll()
            time.sleep(interval)


# -- events and what arrived ---------------------------------------------------------------


def ecid(tag: str) -> dict[str, Any]:
    """An identity map with one ecid, ``ecid-<tag>``: the records' partition key."""
    return {"ecid": [{"id": f"ecid-{tag}"}]}


def ups(record: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = record["segmentMembership"]["ups"]
    return result


def seg_a_events(
    profiles: Sequence[str], status: str, when: str
) -> list[tuple[str, str, bytes | None]]:
    """For Deployment.send: each profile's qualification for SEG_A, with its ecid."""
    return [("q", p, qualification(p, SEG_A, status, when, ecid(p))) for p in profiles]


def entered_then_left(
    deployment: Deployment, profiles: Sequence[str], timeout: float
) -> tuple[int, int]:
    """Waits until every profile's records end with SEG_A exited; checks that each
    profile got realized then exited, in that order (repeats allowed).
    Returns (records read, keys out of order or incomplete)."""
    deadline = time.monotonic() + timeout
    while True:
        # Each time a fresh read of every shard: an incremental reader can miss
        # records that the endpoint appends while it reads.
        reader = StreamReader(deployment.kinesis, deployment.streams[0])
        reader.poll()
        statuses: dict[str, list[str]] = {}
        for key, record in reader.records:
            statuses.setdefault(key, []).append(ups(record)[SEG_A]["status"])
        done = sum(1 for s in statuses.values() if s and s[-1] == "exited")
        if done == len(profiles) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(statuses) == {f"ecid-{p}" for p in profiles}, "every profile exported"
    violations = 0
    for seen in statuses.values():
        # Duplicates are allowed after a crash or a lost reply; loss and reordering are not.
        collapsed = [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]
        violations += collapsed != ["realized", "exited"]
    return len(reader.records), violations


def stalled(worker: WorkerProcess) -> str:
    """What a worker that stopped exporting was doing: its kd_ metrics and its log."""
    _, body = worker.get("/metrics")
    state = [line for line in body.decode().splitlines() if line.startswith("kd_")]
    return "\n".join([*state, worker.log(120)])


async def committed_and_end_offsets(
    bootstrap: str, group: str, topics: list[str], partitions: int
) -> dict[Any, tuple[int, int]]:
    """(committed, end offset) of every partition of the topics."""
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    committed = await admin_call(bootstrap, lambda a: a.list_consumer_group_offsets(group))
    return {tp: (committed[tp].offset if tp in committed else -1, ends[tp]) for tp in tps}


def wait_committed_to_the_end(
    deployment: Deployment, worker: WorkerProcess, timeout: float = 30
) -> None:
    topics = [deployment.q_topic, deployment.p_topic]
    deadline = time.monotonic() + timeout
    while True:
        offsets = run_sync(
            committed_and_end_offsets(
                deployment.stack.kafka_bootstrap, deployment.name, topics, deployment.partitions
            )
        )
        behind = {f"{tp.topic}[{tp.partition}]": o for tp, o in offsets.items() if o[0] != o[1]}
        if not behind:
            return
        assert time.monotonic() < deadline, (
            f"commits (committed, end) not at the end after {timeout}s: {behind}\n{worker.log()}"
        )
        time.sleep(0.5)


def cli(
    *args: str, timeout: float = 120, env: Mapping[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python -m worker <args>` as users run it (``env`` over this environment);
    its result and how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return result, time.monotonic() - started


# -- a steady load, and the consumer group as Kafka sees it ---------------------------------

CHUNK = 25  # events per produce call of LoadProducer


@dataclass(frozen=True, slots=True)
class Sent:
    topic: str
    kind: str
    profile: str
    partition: int
    offset: int
    sent_at: float  # monotonic, before the produce call


@dataclass(frozen=True, slots=True)
class Sample:
    """The consumer group as Kafka saw it at ``at`` (monotonic)."""

    at: float
    state: str
    # member id -> topic -> partitions
    members: dict[str, dict[str, frozenset[int]]]
    committed: dict[tuple[str, int], int]

    def owners(self, topic: str) -> dict[int, str]:
        return {p: member for member, topics in self.members.items() for p in topics[topic]}


async def send_chunk(
    producer: Any, chunk: Sequence[tuple[str, str, str, bytes]], sent: list[Sent]
) -> None:
    started = time.monotonic()
    futures = [await producer.send(t, value, key=p.encode()) for t, _, p, value in chunk]
    metas = await asyncio.gather(*futures)
    sent.extend(
        Sent(t, kind, p, m.partition, m.offset, started)
        for (t, kind, p, _), m in zip(chunk, metas, strict=True)
    )


async def produce_recorded(
    bootstrap: str, plan: Sequence[tuple[str, str, str, bytes]]
) -> list[Sent]:
    """Sends (topic, kind, profile, value) with the profile as key; returns where each went."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent: list[Sent] = []
    try:
        for start in range(0, len(plan), 500):
            await send_chunk(producer, plan[start : start + 500], sent)
    finally:
        await producer.stop()
    return sent


class LoadProducer:
    """Produces a plan at a steady rate in a thread; stops at a gate until it is opened."""

    def __init__(
        self,
        bootstrap: str,
        plan: Sequence[tuple[str, str, str, bytes]],
        rate: float,
        gates: Sequence[tuple[int, threading.Event]],
    ) -> None:
        self.bootstrap = bootstrap
        self.plan = plan
        self.rate = rate
        self.gates = sorted(gates, key=lambda gate: gate[0])
        self.sent: list[Sent] = []
        self.ends: dict[tuple[str, int], int] = {}  # next offset per partition, as acked
        self.error: BaseException | None = None
        self.paused_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            index = 0
            next_at = time.monotonic()
            while index < len(self.plan) and not self._stop.is_set():
                end = min(index + CHUNK, len(self.plan))
                for position, opened in self.gates:
                    if position <= index and not opened.is_set():
                        paused = time.monotonic()
                        while not self._stop.is_set():
                            if await asyncio.to_thread(opened.wait, 0.1):
                                break
                        self.paused_s += time.monotonic() - paused
                        next_at = time.monotonic()
                    elif index < position < end and not opened.is_set():
                        end = position
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                before = len(self.sent)
                await send_chunk(producer, self.plan[index:end], self.sent)
                for item in self.sent[before:]:
                    tp = (item.topic, item.partition)
                    self.ends[tp] = max(self.ends.get(tp, 0), item.offset + 1)
                # Steady pace; after a stall, no burst to catch up more than a second.
                next_at = max(next_at + (end - index) / self.rate, time.monotonic() - 1.0)
                index = end
        finally:
            await producer.stop()


def decode_assignment(raw: bytes, topics: Sequence[str]) -> dict[str, frozenset[int]]:
    found: dict[str, set[int]] = {topic: set() for topic in topics}
    if raw:
        for topic, partitions in ConsumerProtocolMemberAssignment.decode(raw).assignment:
            if topic in found:
                found[topic].update(partitions)
    return {topic: frozenset(partitions) for topic, partitions in found.items()}


class GroupMonitor:
    """Samples the consumer group's members, assignments and committed offsets in a thread."""

    def __init__(
        self, bootstrap: str, group: str, topics: Sequence[str], interval: float = 0.25
    ) -> None:
        self.group = group
        self.topics = list(topics)
        self.interval = interval
        self.samples: list[Sample] = []
        self.errors = 0
        self.last_error: BaseException | None = None
        self._coordinator: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="monitor", daemon=True)
        self._thread.start()
        self._admin: Any = self._call(self._connect(bootstrap))
        self._poller = asyncio.run_coroutine_threadsafe(self._poll(), self._loop)

    @staticmethod
    async def _connect(bootstrap: str) -> Any:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await admin.start()
        return admin

    def _call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _sample(self) -> Sample:
        if self._coordinator is None:
            self._coordinator = await self._admin.find_coordinator(self.group)
        described = await self._admin.describe_consumer_groups(
            [self.group], group_coordinator_id=self._coordinator
        )
        at = time.monotonic()
        error_code, _, state, _, _, members = described[0].groups[0][:6]
        assert error_code == 0, f"DescribeGroups error {error_code}"
        offsets = await self._admin.list_consumer_group_offsets(
            self.group, group_coordinator_id=self._coordinator
        )
        sample = Sample(
            at=at,
            state=str(state),
            members={
                str(member[0]): decode_assignment(member[4], self.topics) for member in members
            },
            committed={
                (tp.topic, tp.partition): int(meta.offset)
                for tp, meta in offsets.items()
                if tp.topic in self.topics and meta.offset >= 0
            },
        )
        self.samples.append(sample)
        return sample

    async def _poll(self) -> None:
        while True:
            try:
                await self._sample()
            except Exception as exc:  # a slow broker: try again, count it
                self.errors += 1
                self.last_error = exc
                self._coordinator = None
            await asyncio.sleep(self.interval)

    def sample_now(self) -> Sample:
        sample: Sample = self._call(self._sample())
        return sample

    def wait_for(
        self,
        what: str | Callable[[], str],
        condition: Callable[[Sample], bool],
        since: float,
        timeout: float,
    ) -> Sample:
        """The first sample taken after ``since`` that meets ``condition``."""
        deadline = time.monotonic() + timeout
        index = 0
        while True:
            samples = self.samples[index:]
            index += len(samples)
            for sample in samples:
                if sample.at > since and condition(sample):
                    return sample
            if time.monotonic() > deadline:
                last = self.samples[-1] if self.samples else None
                explained = what if isinstance(what, str) else what()
                raise AssertionError(
                    f"not within {timeout:.0f}s: {explained}; last sample: {last}; "
                    f"monitor errors: {self.errors} ({self.last_error!r})"
                )
            time.sleep(0.05)

    def first_after(self, since: float, condition: Callable[[Sample], bool]) -> Sample | None:
        return next((s for s in list(self.samples) if s.at > since and condition(s)), None)

    def close(self) -> None:
        self._poller.cancel()
        with contextlib.suppress(Exception):
            self._call(self._admin.close(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
