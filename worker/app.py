"""The Faust application: topics, tables, the agent, and the worker's web port.

Faust carries consumption, offsets, rebalancing and table changelogs; the
decisions are in :mod:`worker.pipeline`, which this module feeds one batch at a
time. Both input topics go to ONE agent (concurrency 1): events of a profile
are then handled in their order, and only that agent writes the tables.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker import __version__, logs, metrics
from worker import faust as faust_fixes
from worker.faust.repair import Repairs
from worker.faust.tables import FaustTables
from worker.kafka_client import broker_credentials, diagnose_connection, kafka_client_kwargs
from worker.kinesis import AioBotoTransport, KinesisWriter, WriterConfig
from worker.monitoring import StateSampler
from worker.pipeline import BatchProcessor, Destination, InputMessage
from worker.settings import ConfigError, Settings

log = logging.getLogger(__name__)


class DeadLetterTopic:
    def __init__(self, app: faust.App, topic: str) -> None:
        self._app = app
        self._topic = topic

    async def send(self, key: bytes | None, value: bytes) -> None:
        await self._app.producer.send_and_wait(self._topic, key, value, None, None, None)


@dataclass(frozen=True)
class TopicLayout:
    partitions: int


async def preflight(settings: Settings) -> TopicLayout:
    """Checks the input topics exist and are co-partitioned; creates the dead-letter topic."""
    kafka = settings.kafka
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap_servers,
        request_timeout_ms=15_000,
        **kafka_client_kwargs(kafka),
    )
    try:
        await asyncio.wait_for(admin.start(), 30)
    except Exception as exc:
        # aiokafka says only "Unable to bootstrap"; name the key to fix when we can.
        raise ConfigError(
            await diagnose_connection(kafka)
            or f"kafka.bootstrap_servers: cannot reach Kafka at {kafka.bootstrap_servers} ({exc!r})"
        ) from None
    try:
        return await _check_topics(settings, admin)
    except KafkaError as exc:
        # A login the broker refused silently (OAUTHBEARER) shows up only here.
        cause = await diagnose_connection(kafka)
        raise ConfigError(cause or f"kafka: {exc!r}") from None
    finally:
        await admin.close()


async def _check_topics(settings: Settings, admin: AIOKafkaAdminClient) -> TopicLayout:
    """Input topics exist and are co-partitioned; creates the dead-letter topic."""
    kafka = settings.kafka
    described = await admin.describe_topics([kafka.qualifications_topic, kafka.profiles_topic])
    counts: dict[str, int] = {}
    for entry in described:
        if entry["error_code"] != 0 or not entry["partitions"]:
            key = (
                "kafka.qualifications_topic"
                if entry["topic"] == kafka.qualifications_topic
                else "kafka.profiles_topic"
            )
            raise ConfigError(f"{key}: topic {entry['topic']!r} does not exist")
        counts[entry["topic"]] = len(entry["partitions"])
    q, p = counts[kafka.qualifications_topic], counts[kafka.profiles_topic]
    if q != p:
        raise ConfigError(
            f"kafka.profiles_topic: {kafka.profiles_topic!r} has {p} partitions but "
            f"{kafka.qualifications_topic!r} has {q}; co-partitioned topics need the same count"
        )
    existing = await admin.list_topics()
    if kafka.dlq_topic not in existing:
        await admin.create_topics([NewTopic(kafka.dlq_topic, q, kafka.replication_factor)])
        log.info("created dead-letter topic %s", kafka.dlq_topic)
    await _ensure_changelogs(admin, settings, q, existing)
    return TopicLayout(partitions=q)


async def _ensure_changelogs(
    admin: Any, settings: Settings, partitions: int, existing: Any
) -> None:
    """Creates the tables' changelog topics if missing, and waits until Kafka lists them.

    Faust creates them itself just before its consumer subscribes; on a fresh
    app_id the consumer's first metadata can then miss one (the broker has not
    published it yet). Faust assigns none of its partitions and refuses every
    write to that table ("PartitionsMismatch: ... changelog topic ... has 0
    partitions") until the consumer's next metadata refresh, 5 minutes later,
    and a rebalance meanwhile hangs waiting for the batch it keeps retrying.
    """
    names = [f"{settings.app_id}-{table}-changelog" for table in ("profiles", "memberships")]
    missing = [name for name in names if name not in existing]
    if missing:
        compact = {"cleanup.policy": "compact"}
        await admin.create_topics(
            [
                NewTopic(n, partitions, settings.kafka.replication_factor, topic_configs=compact)
                for n in missing
            ]
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        described = await admin.describe_topics(names)
        if all(e["error_code"] == 0 and len(e["partitions"]) == partitions for e in described):
            return
        if loop.time() > deadline:
            raise ConfigError(f"app_id: changelog topics {names} not visible in Kafka after 30s")
        await asyncio.sleep(0.2)


class WebServer(Service):
    """/metrics, /healthz and /readyz; up from start-up, before table recovery."""

    def __init__(
        self,
        app: faust.App,
        host: str,
        port: int,
        writers: Sequence[KinesisWriter],
        repairs: Repairs | None = None,
    ) -> None:
        super().__init__()
        self.app = app
        self.repairs = repairs
        self.host = host
        self.port = port
        self.writers = writers
        self._runner: web.AppRunner | None = None

    def ready(self) -> tuple[bool, str]:
        tables: Any = self.app.tables
        if not tables.recovery.completed.is_set() or self.app.rebalancing:
            return False, "tables recovering"
        for writer in self.writers:
            if not writer.writable:
                return False, f"stream {writer.stream} not writable"
        return True, "ready"

    async def _metrics(self, request: web.Request) -> web.Response:
        ok, _ = self.ready()
        metrics.READY.set(1 if ok else 0)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.repairs is not None and self.repairs.stuck:
            return web.json_response({"status": "stuck: lag waiting, no event fetched"}, status=503)
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, why = self.ready()
        return web.json_response({"ready": ok, "detail": why}, status=200 if ok else 503)

    async def on_start(self) -> None:
        for writer in self.writers:
            await writer.start()  # reads each stream's record size limit
        application = web.Application()
        application.router.add_get("/metrics", self._metrics)
        application.router.add_get("/healthz", self._healthz)
        application.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(application, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("serving /metrics, /healthz, /readyz on %s:%d", self.host, self.port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for writer in self.writers:
            await writer.close()


class WorkerApp(faust.App):
    """Faust's App with a bounded shutdown.

    On SIGTERM Faust waits for every event taken but not acknowledged, so the
    batches in flight finish and their offsets are committed. If that takes
    longer than ``shutdown_timeout_s`` (Kinesis refusing writes, say), the
    process exits anyway: what was not acknowledged is replayed by the next
    owner, exactly as after a crash, which loses nothing.
    """

    shutdown_timeout_s: float | None = None

    def on_rebalance_start(self) -> None:
        metrics.REBALANCES.inc()
        super().on_rebalance_start()

    async def on_stop(self) -> None:
        if self.shutdown_timeout_s is not None:
            watchdog = threading.Timer(
                self.shutdown_timeout_s, _exit_now, (self.shutdown_timeout_s,)
            )
            watchdog.daemon = True
            watchdog.start()
        await super().on_stop()


def _exit_now(timeout_s: float) -> None:
    log.warning(
        "shutdown not done after %.0fs: exiting; unacknowledged events will be replayed",
        timeout_s,
    )
    logging.shutdown()
    os._exit(0)


def create_app(settings: Settings, layout: TopicLayout) -> tuple[faust.App, list[Service]]:
    faust_fixes.apply()
    runtime = settings.runtime
    kafka = settings.kafka
    app = WorkerApp(
        settings.app_id,
        broker=f"kafka://{kafka.bootstrap_servers}",
        broker_credentials=broker_credentials(kafka),
        store=runtime.store,
        datadir=str(runtime.data_dir),
        web_enabled=False,  # our own server: Faust's would expose /table and /router
        topic_partitions=layout.partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=runtime.commit_interval_ms / 1000,
        stream_wait_empty=True,
        producer_acks=-1,
        table_cleanup_interval=60.0,
        table_standby_replicas=runtime.standby_replicas,
        topic_replication_factor=kafka.replication_factor,
        # A batch may wait on Kinesis retries; keep the group membership meanwhile.
        broker_max_poll_interval=600.0,
        broker_session_timeout=runtime.session_timeout_ms / 1000,
        # Static membership (KIP-345): a restarted worker with the same id gets
        # its partitions back without a rebalance of the others.
        consumer_group_instance_id=runtime.instance_id,
        broker_heartbeat_interval=min(3.0, runtime.session_timeout_ms / 3000),
        worker_redirect_stdouts=False,
    )
    # Tables are written a batch at a time; Faust's default (100 pending
    # changelog messages) would stall every batch in producer flushes.
    app.producer.buffer.max_messages = max(1000, 4 * runtime.batch_max_events)
    inputs = app.topic(
        kafka.qualifications_topic,
        kafka.profiles_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,
    )
    profiles = app.Table("profiles", partitions=layout.partitions, key_type=str)
    memberships = app.Table("memberships", partitions=layout.partitions, key_type=str)

    _initial_metrics(settings)
    destinations = []
    for destination in settings.destinations:
        observer = metrics.DeliveryMetrics(destination.name, destination.stream, destination.region)
        observer.limits(destination.shard_records_per_s, destination.shard_bytes_per_s)
        writer = KinesisWriter(
            destination.stream,
            AioBotoTransport(destination),
            WriterConfig(
                max_in_flight=destination.max_in_flight,
                shard_records_per_s=destination.shard_records_per_s,
                shard_bytes_per_s=destination.shard_bytes_per_s,
            ),
            observer,
        )
        destinations.append(Destination(destination, writer))
    processor = BatchProcessor(
        settings,
        destinations,
        FaustTables(profiles, memberships),
        DeadLetterTopic(app, kafka.dlq_topic),
    )

    runner = BatchRunner(
        processor,
        runtime.batch_max_events,
        runtime.batch_linger_ms / 1000,
        runtime.max_buffer_bytes,
    )
    app.shutdown_timeout_s = runtime.shutdown_timeout_s

    @app.agent(inputs, concurrency=1, name="export")
    async def export(stream: Any) -> None:
        await runner.run(stream)

    writers = [d.writer for d in destinations]
    input_topics = [kafka.qualifications_topic, kafka.profiles_topic]
    faust_fixes.fetch.SPANS.track(input_topics)
    sampler = StateSampler(app, {"profiles": profiles, "memberships": memberships}, input_topics)
    repairs = Repairs(app, input_topics, runner.activity, sampler.lag_total)
    services: list[Service] = [
        WebServer(app, runtime.web_host, runtime.web_port, writers, repairs),
        sampler,
        repairs,
    ]
    return app, services


def _initial_metrics(settings: Settings) -> None:
    """Series known in advance exist from the first scrape, at 0: a counter that
    appears at 1 has no increase() to alert on."""
    kafka = settings.kafka
    metrics.WORKER_INFO.labels(
        version=__version__, app_id=settings.app_id, store=settings.runtime.store
    ).set(1)
    for outcome in metrics.QUALIFICATION_OUTCOMES:
        metrics.EVENTS.labels(topic=kafka.qualifications_topic, outcome=outcome)
    for outcome in metrics.PROFILE_UPDATE_OUTCOMES:
        metrics.EVENTS.labels(topic=kafka.profiles_topic, outcome=outcome)
    for reason in metrics.DEAD_LETTER_REASONS:
        metrics.DEAD_LETTERS.labels(reason=reason)
    for topic in (kafka.qualifications_topic, kafka.profiles_topic):
        metrics.HOLE_REPLAYS.labels(topic=topic)
    metrics.READY.set(0)


class EventBatches:
    """Events from the stream, handed out in batches of at most ``max_events``.

    Faust's own ``take_events`` is not used: in faust-streaming 0.15.3 it
    acknowledges a whole batch when the loop body is cancelled (shutdown), and
    in our kill/restart test some events between two of its batches never
    reached the agent while their offsets were committed: records were lost.
    With a manual-ack stream, an event is acknowledged only after its batch.

    Back-pressure: the bytes of events taken and not yet done (queued or in
    the batch being put) are bounded by ``max_bytes``; at the bound ``put``
    waits, so the stream stops being read until a batch is done. The queue
    also holds at most ``max_events`` events.
    """

    def __init__(self, max_events: int, linger_s: float, max_bytes: int) -> None:
        self._max = max_events
        self._linger = linger_s
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=max_events)
        self._max_bytes = max_bytes
        self.buffered_bytes = 0
        self.buffered_events = 0
        self.last_event_at = 0.0
        self._room = asyncio.Condition()

    @staticmethod
    def size(event: Any) -> int:
        message = event.message
        return len(message.key or b"") + len(message.value or b"")

    async def release(self, events: Sequence[Any]) -> None:
        """The events are done (or abandoned): their bytes are free again."""
        async with self._room:
            self.buffered_bytes -= sum(self.size(e) for e in events)
            self.buffered_events -= len(events)
            self._room.notify_all()

    async def put(self, event: Any) -> None:
        size = self.size(event)
        async with self._room:
            # One event always fits, however large, so nothing can wedge.
            await self._room.wait_for(
                lambda: self.buffered_bytes == 0 or self.buffered_bytes + size <= self._max_bytes
            )
            self.buffered_bytes += size
            self.buffered_events += 1
            self.last_event_at = asyncio.get_running_loop().time()
        metrics.BUFFERED_BYTES.set(self.buffered_bytes)
        metrics.BUFFERED_EVENTS.set(self.buffered_events)
        await self._queue.put(event)

    async def next_batch(self) -> list[Any]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger
        while len(batch) < self._max:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch


class BatchRunner:
    """Feeds the agent's events to the processor in batches; acks after each batch."""

    def __init__(
        self, processor: BatchProcessor, max_events: int, linger_s: float, max_bytes: int
    ) -> None:
        self._processor = processor
        self._batches = EventBatches(max_events, linger_s, max_bytes)
        self._processing: asyncio.Future[None] | None = None

    def activity(self) -> tuple[float, int]:
        """When the last event was taken, and how many are taken and not done."""
        return self._batches.last_event_at, self._batches.buffered_events

    async def run(self, stream: Any) -> None:
        manual = stream.noack()  # acks are ours
        self._processing = asyncio.ensure_future(self._process(manual))
        try:
            async for event in manual.events():
                await self._batches.put(event)
                if self._processing.done():
                    self._processing.result()  # a crash surfaces here and restarts the agent
        finally:
            self._processing.cancel()

    async def _process(self, stream: Any) -> None:
        while True:
            events = await self._batches.next_batch()
            messages = [
                InputMessage(
                    e.message.topic,
                    e.message.partition,
                    e.message.offset,
                    e.message.key,
                    e.message.value,
                    e,
                )
                for e in events
            ]
            metrics.BATCH_EVENTS.observe(len(messages))
            await _process_until_done(self._processor, messages)
            for event in events:
                await stream.ack(event)
            await self._batches.release(events)
            metrics.BUFFERED_BYTES.set(self._batches.buffered_bytes)
            metrics.BUFFERED_EVENTS.set(self._batches.buffered_events)


async def _process_until_done(processor: BatchProcessor, messages: list[InputMessage]) -> None:
    """Processes one batch, retrying the whole batch on an unexpected failure.

    Per-event problems are handled inside the processor (dead letters); what
    reaches here is a bug or Kafka refusing the dead letters. The batch is
    retried, never skipped: replays may duplicate records, never lose them.
    """
    attempt = 0
    while True:
        try:
            with metrics.BATCH_SECONDS.time():
                await processor.process(messages)
            return
        except Exception:
            attempt += 1
            log.exception("batch of %d events failed; retry %d", len(messages), attempt)
            await asyncio.sleep(min(30.0, 0.5 * 2 ** min(attempt, 6)))


def run(settings: Settings) -> int:
    """Runs the worker until SIGTERM/SIGINT."""
    log_config = logs.setup(settings.runtime.log_level, logs.secret_values(settings))
    layout = asyncio.run(preflight(settings))
    Path(settings.runtime.data_dir).mkdir(parents=True, exist_ok=True)
    app, services = create_app(settings, layout)
    worker = faust.Worker(
        app,
        *services,
        loglevel=settings.runtime.log_level.upper(),
        logging_config=log_config,  # mode would install its own colored handler
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
    return 0
