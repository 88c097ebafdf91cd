"""Throughput of the worker against its ceilings, its latency, and 1 against 2 workers.

Run by hand against the local stack (make stack-up), from the repo root, on a
quiet machine:

    PYTHONPATH=. .venv/bin/python bench/throughput.py --events 100000 --profiles 20000

One run preloads N qualification events of P profiles on fresh topics of 8
partitions (profile ``i % P`` gets event ``i``; each profile alternates
realized/exited of the one mapped segment, one second later each time, so
every event exports exactly one record to the one destination). Then, each in
its own process, one after another, on the same preloaded topics:

- (a) raw aiokafka: one consumer assigned every partition of both topics from
  the beginning, ``getmany`` and ``orjson.loads`` of every value; timed from
  the first ``getmany`` to the last value decoded;
- (b) a no-op faust-streaming agent (``async for _ in stream``, the default
  auto-ack stream, not the worker's ``noack``), with the app and topic
  settings of ``worker/app.py`` (``app_options``, so Faust's opt-in Cython
  stream path too) and the worker's Faust fixes, but not its speed-ups
  (``worker.faust.apply_speedups``, the lean monitor): Faust as it ships;
  timed from the first event to the last;
- (c) the worker (``python -m worker run``) writing to an instant-ack Kinesis
  endpoint served by this process (every record accepted at once, no shard
  limits in the worker); records accepted after the first PutRecords call /
  time from the first call to the last;
- (d) the worker writing to the local moto endpoint (a fresh stream of 8
  shards, the default shard limits); timed from the first to the last rise of
  its ``kd_events_total``.

For (c) and (d): CPU µs/event is the worker's utime+stime (/proc/PID/stat)
over the events it handled between the first sample that saw events done and
the end (start-up excluded); peak RSS is its VmHWM. For (a) and (b), the
process's own CPU time over the timed window and ru_maxrss.

Then latency: the worker on the instant-ack endpoint and fresh, empty topics;
events produced live at half the (c) rate for --latency-seconds, each carrying
its send time (``time.time_ns()``) as an identity of namespace ``bench`` that
the record's ``identityMap`` carries; latency = the time the endpoint received
the record - the send time. And scaling: 2 workers of one fresh app_id on the
preloaded topics, against the 1 worker of (c).

Each phase has its own consumer group; topics (inputs, dead letters, Faust's
changelogs) all start with ``bench-tp-<uuid>`` and are deleted at the end.
The summary at the end is markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import importlib.metadata
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic

from tests.support import (
    LOCAL_AUTH,
    REPO,
    Stack,
    WorkerProcess,
    admin_call,
    produce,
    qualification,
    run_sync,
    wait_active,
)

PARTITIONS = 8
SHARDS = 8
SEGMENT = "bench-segment-0001"
BASE_TIME = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
SAMPLE_INTERVAL_S = 0.25
MEASUREMENTS = ("a", "b", "c", "d", "latency", "scaling")
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"


# -- the events ---------------------------------------------------------------------------


def event(index: int, profiles: int, sent_ns: int | None = None) -> tuple[bytes, bytes]:
    """Event ``index`` of a load: (key, value). Profile ``index % profiles``, its
    ``index // profiles``-th event: realized when even, exited when odd, a second
    later each time, so each event exports exactly one record."""
    profile = f"p-{index % profiles:07d}"
    step = index // profiles
    identities: dict[str, Any] = {"ecid": [{"id": f"ecid-{profile}"}]}
    if sent_ns is not None:
        identities["bench"] = [{"id": str(sent_ns)}]
    when = (BASE_TIME + datetime.timedelta(seconds=step)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = "realized" if step % 2 == 0 else "exited"
    return profile.encode(), qualification(profile, SEGMENT, status, when, identities)


@dataclass(frozen=True)
class Topics:
    qualifications: str
    profiles: str

    @property
    def both(self) -> list[str]:
        return [self.qualifications, self.profiles]


def local_stack() -> Stack:
    """The stack of `make stack-up` (or KAFKA_BOOTSTRAP / KINESIS_ENDPOINT)."""
    return Stack(
        os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        os.environ.get("KINESIS_ENDPOINT", "http://127.0.0.1:4567"),
    )


def new_run(prefix: str) -> tuple[str, Topics]:
    """A run id of its own, and the input topic names derived from it."""
    run = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return run, Topics(f"{run}-qualifications", f"{run}-profiles")


def create_topics(bootstrap: str, topics: Topics) -> None:
    new = [NewTopic(name, PARTITIONS, 1) for name in topics.both]
    run_sync(admin_call(bootstrap, lambda admin: admin.create_topics(new)))


def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    async def delete(admin: Any) -> list[str]:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
        return names

    deleted: list[str] = run_sync(admin_call(bootstrap, delete))
    return deleted


def preload(bootstrap: str, topic: str, events: int, profiles: int) -> float:
    """Produces the load; returns the producer's events/s."""
    messages = [(topic, *event(index, profiles)) for index in range(events)]
    started = time.monotonic()
    run_sync(produce(bootstrap, messages))
    return events / (time.monotonic() - started)


async def produce_paced(
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    make: Callable[[int, int], tuple[bytes, bytes]],
) -> int:
    """Produces ``rate`` events/s for ``seconds``: event ``i`` is ``make(i, send time
    in ns)`` (its key and value)."""
    total = max(1, int(rate * seconds))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        started = time.monotonic()
        for index in range(total):
            delay = started + index / rate - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
            key, value = make(index, time.time_ns())
            futures.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return total


# -- the instant-ack Kinesis endpoint -----------------------------------------------------


class InstantKinesis:
    """A Kinesis endpoint (JSON 1.1, ``X-Amz-Target``) that accepts every record at once.

    Answers DescribeStreamSummary (ACTIVE, ``shards`` open shards), ListShards
    (even hash key ranges) and PutRecords (every record accepted, on the shard
    its key hashes to). Counts what it accepted; with ``latency`` it also reads
    each record's ``identityMap.bench[0].id`` (a send time in ns) and keeps
    now - send time in ms.
    """

    def __init__(self, shards: int = SHARDS, latency: bool = False) -> None:
        self.shards = shards
        self.latency = latency
        self.accepted = 0
        self.first_at: float | None = None  # monotonic, first PutRecords call
        self.first_records = 0  # records of that call
        self.last_at = 0.0
        self.latencies_ms: list[float] = []
        self._range = 2**128 // shards
        self._sequence = 0

    def rate(self) -> float:
        """Records accepted after the first call / time from the first call to the last."""
        if self.first_at is None or self.last_at <= self.first_at:
            return 0.0
        return (self.accepted - self.first_records) / (self.last_at - self.first_at)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now_ns, now = time.time_ns(), time.monotonic()
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        payload = orjson.loads(body) if body else {}
        if operation == "PutRecords":
            reply = self.put_records(payload["Records"], now, now_ns)
        elif operation == "DescribeStreamSummary":
            reply = self.describe(str(payload.get("StreamName", "bench")))
        elif operation == "ListShards":
            reply = {"Shards": self.shard_list()}
        else:
            return web.Response(
                status=400,
                headers={"Content-Type": JSON_CONTENT_TYPE},
                body=orjson.dumps(
                    {"__type": "UnknownOperationException", "message": f"not here: {operation}"}
                ),
            )
        return web.Response(headers={"Content-Type": JSON_CONTENT_TYPE}, body=orjson.dumps(reply))

    def put_records(self, records: list[dict[str, Any]], now: float, now_ns: int) -> dict[str, Any]:
        entries = []
        for record in records:
            digest = hashlib.md5(record["PartitionKey"].encode()).digest()
            shard = min(int.from_bytes(digest, "big") // self._range, self.shards - 1)
            self._sequence += 1
            entries.append(
                {"SequenceNumber": f"{self._sequence:056d}", "ShardId": f"shardId-{shard:012d}"}
            )
            if self.latency:
                data = orjson.loads(base64.b64decode(record["Data"]))
                sent_ns = int(data["identityMap"]["bench"][0]["id"])
                self.latencies_ms.append((now_ns - sent_ns) / 1e6)
        if self.first_at is None:
            self.first_at, self.first_records = now, len(records)
        self.accepted += len(records)
        self.last_at = now
        return {"FailedRecordCount": 0, "Records": entries}

    def describe(self, stream: str) -> dict[str, Any]:
        return {
            "StreamDescriptionSummary": {
                "StreamName": stream,
                "StreamARN": f"arn:aws:kinesis:us-east-1:123456789012:stream/{stream}",
                "StreamStatus": "ACTIVE",
                "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                "RetentionPeriodHours": 24,
                "StreamCreationTimestamp": 1_700_000_000.0,
                "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
                "EncryptionType": "NONE",
                "OpenShardCount": self.shards,
                "ConsumerCount": 0,
            }
        }

    def shard_list(self) -> list[dict[str, Any]]:
        return [
            {
                "ShardId": f"shardId-{i:012d}",
                "HashKeyRange": {
                    "StartingHashKey": str(i * self._range),
                    "EndingHashKey": str(
                        2**128 - 1 if i == self.shards - 1 else (i + 1) * self._range - 1
                    ),
                },
                "SequenceNumberRange": {"StartingSequenceNumber": "0"},
            }
            for i in range(self.shards)
        ]


class EndpointThread:
    """An InstantKinesis served on 127.0.0.1 by an event loop in a thread."""

    def __init__(self, kinesis: InstantKinesis) -> None:
        self.kinesis = kinesis
        self._runner: web.AppRunner | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.url: str = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> str:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.kinesis.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> EndpointThread:
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# -- (a) and (b): child processes -----------------------------------------------------------


def write_result(path: Path, result: dict[str, float]) -> None:
    path.write_bytes(orjson.dumps(result))


def peak_rss_kib_self() -> float:
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


async def raw_consume(bootstrap: str, topics: Sequence[str], expected: int) -> dict[str, float]:
    """(a): every partition assigned, from the beginning; every value decoded."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count = 0
        cpu_started, started = time.process_time(), time.perf_counter()
        while count < expected:
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                for message in messages:
                    orjson.loads(message.value)
                count += len(messages)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        await consumer.stop()
    return {
        "events": count,
        "events_per_s": count / elapsed,
        "cpu_us_per_event": cpu / count * 1e6,
        "peak_rss_kib": peak_rss_kib_self(),
    }


def faust_noop(
    bootstrap: str, topics: Sequence[str], app_id: str, data_dir: Path, expected: int, out: Path
) -> None:
    """(b): a no-op agent (auto ack) with worker/app.py's app and topic settings and
    the worker's Faust fixes, not its speed-ups; writes the result and exits at
    the last event."""
    import faust

    from worker import faust as faust_fixes
    from worker.app import app_options
    from worker.settings import Settings

    faust_fixes.apply()
    faust_fixes.fetch.SPANS.track(topics)
    settings = Settings.model_validate(
        {
            "app_id": app_id,
            "kafka": {
                "bootstrap_servers": bootstrap,
                "qualifications_topic": topics[0],
                "profiles_topic": topics[1],
                "dlq_topic": f"{app_id}-dlq",
            },
            "destinations": [
                {
                    "name": "noop",
                    "stream": "noop",
                    "region": "us-east-1",
                    "segments": [{"id": SEGMENT}],
                }
            ],
            "runtime": {"data_dir": str(data_dir)},
        }
    )
    app = faust.App(app_id, **app_options(settings, PARTITIONS))
    inputs = app.topic(
        *topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,
    )

    @app.agent(inputs, concurrency=1, name="noop")
    async def noop(stream: Any) -> None:
        count = 0
        started = cpu_started = 0.0
        async for _ in stream:
            count += 1
            if count == 1:
                started, cpu_started = time.perf_counter(), time.process_time()
            if count == expected:
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
                write_result(
                    out,
                    {
                        "events": count,
                        "events_per_s": (count - 1) / elapsed if elapsed > 0 else 0.0,
                        "cpu_us_per_event": cpu / max(1, count - 1) * 1e6,
                        "peak_rss_kib": peak_rss_kib_self(),
                    },
                )
                os._exit(0)  # Faust's shutdown is not what is measured

    faust.Worker(
        app, loglevel="WARNING", quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


def run_child(kind: str, arguments: Sequence[str], workdir: Path, timeout: float) -> dict[str, Any]:
    """This file with ``--child kind``, in its own process; its result file."""
    out = workdir / f"{kind}.json"
    log_path = workdir / f"{kind}.log"
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    with log_path.open("wb") as log:
        completed = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--result", str(out), *arguments],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": pythonpath},
            timeout=timeout,
            check=False,
        )
    if completed.returncode != 0 or not out.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"child {kind} failed (exit {completed.returncode}):\n{tail}")
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    return result


# -- (c) and (d): the worker ----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1])
    return 0.0


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic
    events: float  # kd_events_total, all labels
    cpu_s: float


@dataclass
class Watched:
    """A worker process and its samples."""

    worker: WorkerProcess
    samples: list[Sample] = field(default_factory=list)
    peak_rss_kib: float = 0.0
    rebalances: float = 0.0

    @property
    def pid(self) -> int:
        assert self.worker.process is not None
        return int(self.worker.process.pid)

    def sample(self) -> Sample:
        try:
            events = self.worker.metric("kd_events_total")
        except OSError:  # not listening yet
            events = 0.0
        taken = Sample(time.monotonic(), events, cpu_seconds(self.pid))
        self.samples.append(taken)
        return taken

    def window(self) -> tuple[Sample, Sample]:
        """The first sample that saw events done, and the first that saw the final count."""
        last = self.samples[-1]
        first = next((s for s in self.samples if s.events > 0), last)
        end = next(s for s in self.samples if s.events >= last.events)
        return first, end


@dataclass(frozen=True)
class WorkerFigures:
    name: str
    events: int
    events_per_s: float  # from its kd_events_total samples
    cpu_us_per_event: float
    peak_rss_mib: float
    rebalances: int


def figures(watched: Watched) -> WorkerFigures:
    first, end = watched.window()
    handled = end.events - first.events
    span = end.at - first.at
    return WorkerFigures(
        name=watched.worker.name,
        events=int(end.events),
        events_per_s=handled / span if span > 0 else 0.0,
        cpu_us_per_event=(end.cpu_s - first.cpu_s) / handled * 1e6 if handled > 0 else 0.0,
        peak_rss_mib=watched.peak_rss_kib / 1024,
        rebalances=int(watched.rebalances),
    )


def all_consuming_rate(watched: Sequence[Watched]) -> float | None:
    """Events/s of all workers together while every one of them consumed: from the
    first sampling round where each had handled events to the first where one had
    handled all it would (None if one never handled any). The workers are sampled
    in the same rounds, so samples of one index were taken together."""
    rounds = min(len(w.samples) for w in watched)
    finals = [w.samples[-1].events for w in watched]
    start = next((j for j in range(rounds) if all(w.samples[j].events > 0 for w in watched)), None)
    if start is None:
        return None
    end = next(
        j
        for j in range(start, rounds)
        if j == rounds - 1
        or any(w.samples[j].events >= f for w, f in zip(watched, finals, strict=True))
    )
    span = watched[0].samples[end].at - watched[0].samples[start].at
    if span <= 0:
        return None
    return sum(w.samples[end].events - w.samples[start].events for w in watched) / span


@dataclass(frozen=True)
class RunFigures:
    events_per_s: float  # all workers together
    workers: list[WorkerFigures]
    accepted: int | None  # records the instant-ack endpoint accepted
    all_consuming_per_s: float | None = None  # see all_consuming_rate


@dataclass(frozen=True)
class Context:
    stack: Stack
    run: str  # prefix of every topic and app_id of this run
    topics: Topics  # the preloaded ones
    events: int
    profiles: int
    workdir: Path

    @property
    def timeout_s(self) -> float:
        return 180 + self.events / 100

    def worker_config(
        self, app_id: str, endpoint: str, stream: str, *, limits: bool, topics: Topics | None = None
    ) -> dict[str, Any]:
        """One destination mapping SEGMENT, keyed by ecid; the runtime defaults.
        ``limits=False``: no shard limits in the worker (the instant-ack endpoint)."""
        destination: dict[str, Any] = {
            "name": "bench",
            "stream": stream,
            "region": "us-east-1",
            "endpoint_url": endpoint,
            "auth": dict(LOCAL_AUTH),
            "partition_key_namespaces": ["ecid"],
            "segments": [{"id": SEGMENT}],
        }
        if not limits:
            destination |= {"shard_records_per_s": 0, "shard_bytes_per_s": 0}
        topics = topics or self.topics
        return {
            "app_id": app_id,
            "kafka": {
                "bootstrap_servers": self.stack.kafka_bootstrap,
                "qualifications_topic": topics.qualifications,
                "profiles_topic": topics.profiles,
                "dlq_topic": f"{self.run}-dlq",
            },
            "destinations": [destination],
        }


def run_workers(
    context: Context, config: dict[str, Any], names: Sequence[str], done: Callable[[], bool]
) -> list[Watched]:
    """Starts the workers at once; samples them until they handled every event and
    ``done()``; stops them (SIGTERM)."""
    watched = [Watched(WorkerProcess(config, context.workdir, name)) for name in names]
    try:
        for each in watched:
            each.worker.start(wait_ready=False)
        deadline = time.monotonic() + context.timeout_s
        while True:
            for each in watched:
                assert each.worker.process is not None
                if each.worker.process.poll() is not None:
                    raise RuntimeError(f"{each.worker.name} exited:\n{each.worker.log()}")
            total = sum(each.sample().events for each in watched)
            if total >= context.events and done():
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{total:.0f} of {context.events} events after {context.timeout_s:.0f} s:\n"
                    + "\n".join(each.worker.log(20) for each in watched)
                )
            time.sleep(SAMPLE_INTERVAL_S)
        for each in watched:
            each.peak_rss_kib = peak_rss_kib(each.pid)
            each.rebalances = each.worker.metric("kd_rebalances_total")
    finally:
        for each in watched:
            each.worker.stop()
    return watched


def worker_instant(context: Context, app_id: str, names: Sequence[str]) -> RunFigures:
    """(c) and scaling: workers on the preloaded topics, to the instant-ack endpoint."""
    with EndpointThread(InstantKinesis()) as endpoint:
        kinesis = endpoint.kinesis
        config = context.worker_config(app_id, endpoint.url, f"{app_id}-stream", limits=False)
        watched = run_workers(context, config, names, lambda: kinesis.accepted >= context.events)
        return RunFigures(
            kinesis.rate(),
            [figures(w) for w in watched],
            kinesis.accepted,
            all_consuming_rate(watched),
        )


def worker_moto(context: Context) -> RunFigures:
    """(d): one worker on the preloaded topics, to moto (a fresh stream of 8 shards)."""
    stream = f"{context.run}-stream"
    client = context.stack.kinesis()
    client.create_stream(StreamName=stream, ShardCount=SHARDS)
    try:
        wait_active(client, stream)
        config = context.worker_config(
            f"{context.run}-d", context.stack.kinesis_endpoint, stream, limits=True
        )
        watched = run_workers(context, config, ["d"], lambda: True)
        worker = figures(watched[0])
        return RunFigures(worker.events_per_s, [worker], None)
    finally:
        client.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)


# -- latency --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyFigures:
    rate: float  # asked for
    achieved: float  # events sent / production time
    sent: int
    received: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def percentile(ordered: Sequence[float], share: float) -> float:
    """Nearest rank."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def latency(context: Context, rate: float, seconds: float) -> LatencyFigures:
    """The worker on fresh empty topics and the instant-ack endpoint; events produced
    live at ``rate``; send time -> the endpoint received the record."""
    live = Topics(f"{context.run}-live-qualifications", f"{context.run}-live-profiles")
    create_topics(context.stack.kafka_bootstrap, live)
    with EndpointThread(InstantKinesis(latency=True)) as endpoint:
        kinesis = endpoint.kinesis
        app_id = f"{context.run}-latency"
        config = context.worker_config(
            app_id, endpoint.url, f"{app_id}-stream", limits=False, topics=live
        )
        worker = WorkerProcess(config, context.workdir, "latency")
        try:
            worker.start()
            started = time.monotonic()
            sent = asyncio.run(
                produce_paced(
                    context.stack.kafka_bootstrap,
                    live.qualifications,
                    rate,
                    seconds,
                    lambda index, sent_ns: event(index, context.profiles, sent_ns=sent_ns),
                )
            )
            achieved = sent / (time.monotonic() - started)
            deadline = time.monotonic() + 60
            while kinesis.accepted < sent and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            worker.stop()
        if os.environ.get("BENCH_LATENCY_DUMP"):
            Path(os.environ["BENCH_LATENCY_DUMP"]).write_text(
                orjson.dumps(kinesis.latencies_ms).decode()
            )
        ordered = sorted(kinesis.latencies_ms)
    if not ordered:
        raise RuntimeError(f"no record arrived:\n{worker.log()}")
    return LatencyFigures(
        rate,
        achieved,
        sent,
        len(ordered),
        percentile(ordered, 0.50),
        percentile(ordered, 0.99),
        ordered[-1],
    )


# -- the machine and the summary --------------------------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def kafka_version() -> str:
    """The local stack's broker version, from its class path (kafka-X.Y.Z/libs)."""
    status = subprocess.run(
        ["bash", str(REPO / "deploy" / "local" / "stack.sh"), "status"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = re.search(r"kafka running \(pid (\d+)\)", status)
    if found:
        with_args = Path(f"/proc/{found[1]}/cmdline").read_bytes().decode(errors="replace")
        version = re.search(r"kafka[_-](?:2\.\d+-)?(\d+\.\d+\.\d+)", with_args)
        if version:
            return version[1]
    return "unknown"


def machine() -> str:
    return (
        f"{len(os.sched_getaffinity(0))} CPUs ({cpu_model()}), {memory_gib():.0f} GiB RAM, "
        f"Python {platform.python_version()}, "
        f"faust-streaming {importlib.metadata.version('faust-streaming')}, "
        f"aiokafka {importlib.metadata.version('aiokafka')}, "
        f"Apache Kafka {kafka_version()} (local stack, single node, on the same CPUs)"
    )


@dataclass
class Results:
    preload_rate: float = 0.0
    children: dict[str, dict[str, Any]] = field(default_factory=dict)  # "a", "b"
    workers: dict[str, RunFigures] = field(default_factory=dict)  # "c", "d", "scaling"
    latency: LatencyFigures | None = None


def cells(rate: float, cpu_us: float, rss_mib: float) -> str:
    return f"{rate:,.0f} | {cpu_us:,.0f} | {rss_mib:,.0f}"


def summary(context: Context, results: Results) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        f"## Throughput, latency and scaling (`bench/throughput.py`), {today}",
        "",
        f"Machine: {machine()}.",
        f"Load: {context.events:,} qualifications of {context.profiles:,} profiles (each "
        "event exports one record to one destination), both topics 8 partitions, "
        f"preloaded at {results.preload_rate:,.0f} events/s; `memory://`, runtime defaults.",
        "",
        "| measurement | events/s | CPU µs/event | peak RSS MiB |",
        "|---|---|---|---|",
    ]
    labels = {
        "a": "(a) raw aiokafka `getmany` + `orjson.loads`, partitions assigned",
        "b": "(b) faust-streaming no-op agent, auto ack, the worker's app settings and fixes",
        "c": "(c) worker -> instant-ack endpoint (no shard limits)",
        "d": f"(d) worker -> moto Kinesis, {SHARDS} shards, default shard limits",
    }
    for key in ("a", "b"):
        if key in results.children:
            child = results.children[key]
            row = cells(
                child["events_per_s"], child["cpu_us_per_event"], child["peak_rss_kib"] / 1024
            )
            lines.append(f"| {labels[key]} | {row} |")
    for key in ("c", "d"):
        if key in results.workers:
            run = results.workers[key]
            worker = run.workers[0]
            row = cells(run.events_per_s, worker.cpu_us_per_event, worker.peak_rss_mib)
            lines.append(f"| {labels[key]} | {row} |")
    ratios = []
    if "c" in results.workers:
        worker_rate = results.workers["c"].events_per_s
        for key, name in (("b", "no-op agent (b)"), ("a", "raw aiokafka (a)")):
            if key in results.children:
                ratio = worker_rate / results.children[key]["events_per_s"]
                ratios.append(f"worker (c) / {name} = {ratio:.3f}")
    if ratios:
        lines += ["", "; ".join(ratios) + "."]
    if results.latency is not None:
        lat = results.latency
        lines += [
            "",
            f"Latency, worker -> instant-ack endpoint, live load at {lat.achieved:,.0f} events/s "
            f"(asked {lat.rate:,.0f}) for {lat.sent:,} events, send time -> record received: "
            f"p50 {lat.p50_ms:,.0f} ms, p99 {lat.p99_ms:,.0f} ms, max {lat.max_ms:,.0f} ms "
            f"({lat.received:,} records).",
        ]
    scaling = [(1, results.workers.get("c") or results.workers.get("scaling-1"))]
    scaling.append((2, results.workers.get("scaling")))
    rows = [(count, run) for count, run in scaling if run is not None]
    if rows:
        lines += [
            "",
            "| workers (instant-ack endpoint) | events/s total | events/s while all consumed "
            "| events/s per worker | events per worker | rebalances seen |",
            "|---|---|---|---|---|---|",
        ]
        for count, run in rows:
            together = run.all_consuming_per_s
            together_cell = "-" if together is None else f"{together:,.0f}"
            per_worker = " / ".join(f"{w.events_per_s:,.0f}" for w in run.workers)
            events = " / ".join(f"{w.events:,}" for w in run.workers)
            rebalances = " / ".join(str(w.rebalances) for w in run.workers)
            lines.append(
                f"| {count} | {run.events_per_s:,.0f} | {together_cell} | {per_worker} "
                f"| {events} | {rebalances} |"
            )
        lines += [
            "",
            "Total: records accepted / first to last accepted. While all consumed: from "
            "the first moment every worker had handled events (after the join and its "
            "rebalance) to the first that had handled all it would. Per worker: from its "
            "first to its last event handled. Rebalances include the first assignment.",
        ]
    checks = [
        f"{key}: {run.accepted:,} records accepted"
        for key, run in results.workers.items()
        if run.accepted is not None and run.accepted != context.events
    ]
    if checks:
        lines += ["", f"Expected {context.events:,} records per run; " + "; ".join(checks) + "."]
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure(
    context: Context, skip: set[str], latency_rate: float | None, seconds: float
) -> Results:
    results = Results()
    bootstrap = context.stack.kafka_bootstrap
    create_topics(bootstrap, context.topics)
    results.preload_rate = preload(
        bootstrap, context.topics.qualifications, context.events, context.profiles
    )
    say(f"preloaded {context.events:,} events at {results.preload_rate:,.0f} events/s")
    common = ["--events", str(context.events), "--bootstrap", bootstrap]
    common += ["--topics", ",".join(context.topics.both)]
    if "a" not in skip:
        results.children["a"] = run_child("a", common, context.workdir, context.timeout_s)
        say(f"(a) raw aiokafka: {results.children['a']['events_per_s']:,.0f} events/s")
    if "b" not in skip:
        noop = [*common, "--app-id", f"{context.run}-noop"]
        noop += ["--data-dir", str(context.workdir / "noop-data")]
        results.children["b"] = run_child("b", noop, context.workdir, context.timeout_s)
        say(f"(b) no-op Faust agent: {results.children['b']['events_per_s']:,.0f} events/s")
    if "c" not in skip:
        results.workers["c"] = worker_instant(context, f"{context.run}-c", ["c"])
        say(f"(c) worker, instant-ack: {results.workers['c'].events_per_s:,.0f} events/s")
    if "d" not in skip:
        results.workers["d"] = worker_moto(context)
        say(f"(d) worker, moto: {results.workers['d'].events_per_s:,.0f} events/s")
    if "latency" not in skip:
        rate = latency_rate
        if rate is None:
            rate = results.workers["c"].events_per_s / 2 if "c" in results.workers else 1000.0
        results.latency = latency(context, rate, seconds)
        say(f"latency: p50 {results.latency.p50_ms:,.0f} ms, p99 {results.latency.p99_ms:,.0f} ms")
    if "scaling" not in skip:
        if "c" not in results.workers:
            results.workers["scaling-1"] = worker_instant(context, f"{context.run}-s1", ["s1"])
        results.workers["scaling"] = worker_instant(context, f"{context.run}-s2", ["s2a", "s2b"])
        say(f"scaling: 2 workers {results.workers['scaling'].events_per_s:,.0f} events/s")
    return results


def child_main(args: argparse.Namespace) -> None:
    topics = args.topics.split(",")
    out = Path(args.result)
    bootstrap = args.bootstrap
    if args.child == "a":
        write_result(out, asyncio.run(raw_consume(bootstrap, topics, args.events)))
    else:
        faust_noop(bootstrap, topics, args.app_id, Path(args.data_dir), args.events, out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--skip", default="", help=f"comma-separated, of: {','.join(MEASUREMENTS)}")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument(
        "--latency-rate", type=float, default=None, help="default: half the (c) rate"
    )
    # The measurements' own processes.
    parser.add_argument("--child", choices=["a", "b"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--topics", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--app-id", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    skip = {item.strip() for item in args.skip.split(",") if item.strip()}
    unknown = skip - set(MEASUREMENTS)
    if unknown:
        parser.error(f"--skip: unknown {sorted(unknown)}; choose from {','.join(MEASUREMENTS)}")
    if args.events < 1 or not 1 <= args.profiles <= args.events:
        parser.error("need 1 <= --profiles <= --events")
    stack = local_stack()
    run, topics = new_run("bench-tp")
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        context = Context(stack, run, topics, args.events, args.profiles, Path(tmp))
        try:
            results = measure(context, skip, args.latency_rate, args.latency_seconds)
        finally:
            deleted = delete_topics(stack.kafka_bootstrap, f"{run}-")
            say(f"deleted {len(deleted)} topics of {run}")
    print(summary(context, results))


if __name__ == "__main__":
    main()
