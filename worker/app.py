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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from mode import CrashingSupervisor, Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker import __version__, logs, metrics
from worker import faust as faust_fixes
from worker.batching import BatchRunner
from worker.budget import MemoryBudget
from worker.faust.repair import Repairs
from worker.faust.tables import FaustTables
from worker.kafka_client import broker_credentials, diagnose_connection, kafka_client_kwargs
from worker.kinesis import AioBotoTransport, KinesisWriter, WriterConfig
from worker.monitoring import StateSampler
from worker.pipeline import BatchProcessor, Destination
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
        stalled_s: Callable[[], float] = lambda: 0.0,
        stall_timeout_s: float = float("inf"),
    ) -> None:
        super().__init__()
        self.app = app
        self.repairs = repairs
        self.stalled_s = stalled_s
        self.stall_timeout_s = stall_timeout_s
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
        stalled = self.stalled_s()
        if stalled > self.stall_timeout_s:
            return web.json_response(
                {"status": f"stuck: no batch completed for {stalled:.0f}s with events waiting"},
                status=503,
            )
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
    memory = MemoryBudget(runtime.max_buffer_bytes)
    processor = BatchProcessor(
        settings,
        destinations,
        FaustTables(profiles, memberships),
        DeadLetterTopic(app, kafka.dlq_topic),
        memory,
    )
    runner = BatchRunner(
        processor, runtime.batch_max_events, runtime.batch_linger_ms / 1000, memory
    )
    metrics.BATCH_STALLED.set_function(runner.stalled_s)
    app.shutdown_timeout_s = runtime.shutdown_timeout_s

    # A crash of the agent stops the worker (exit 1) rather than restarting the
    # agent in place: events it took and never acknowledged would hold the
    # commits of their partitions until the process restarts anyway.
    @app.agent(inputs, concurrency=1, name="export", supervisor_strategy=CrashingSupervisor)
    async def export(stream: Any) -> None:
        await runner.run(stream)

    writers = [d.writer for d in destinations]
    input_topics = [kafka.qualifications_topic, kafka.profiles_topic]
    faust_fixes.fetch.SPANS.track(input_topics)
    sampler = StateSampler(app, {"profiles": profiles, "memberships": memberships}, input_topics)
    repairs = Repairs(app, input_topics, runner.activity, sampler.lag_total)
    services: list[Service] = [
        WebServer(
            app,
            runtime.web_host,
            runtime.web_port,
            writers,
            repairs,
            runner.stalled_s,
            runtime.stall_timeout_s,
        ),
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
