"""The Faust application: topics, tables, the agent, and the services around it.

Faust carries consumption, offsets, rebalancing and table changelogs; the
decisions are in :mod:`worker.pipeline`, which :mod:`worker.batching` feeds one
batch at a time. Both input topics go to ONE agent (concurrency 1): events of a
profile are then handled in their order, and only that agent writes the tables.
This module only assembles those pieces.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
from mode import CrashingSupervisor, Service

from worker import faust as faust_fixes
from worker import logs, metrics
from worker.backfill import Activations, Backfiller
from worker.batching import Backgrounds, BatchRunner
from worker.budget import MemoryBudget
from worker.faust.deadletters import DeadLetterTopic
from worker.faust.monitor import LeanMonitor
from worker.faust.repair import Repairs
from worker.faust.state import owned_partitions, rebalance_count
from worker.faust.tables import FaustTables
from worker.health import Health
from worker.kafka_client import broker_credentials
from worker.kinesis import AioBotoTransport, KinesisWriter, WriterConfig
from worker.monitoring import StateSampler
from worker.parking import Parking
from worker.parking_log import KafkaParkingLog
from worker.pipeline import BatchProcessor, Destination
from worker.settings import Settings
from worker.topics import PARKED_MESSAGE_BYTES, TopicLayout, preflight
from worker.web import WebServer

log = logging.getLogger(__name__)

GC_THRESHOLDS = (20_000, 20, 20)


class Writers(Service):
    """Starts the destinations' writers (each reads its stream's limits) and closes them."""

    def __init__(self, writers: Sequence[KinesisWriter]) -> None:
        super().__init__()
        self.writers = writers

    async def on_start(self) -> None:
        for writer in self.writers:
            await writer.start()

    async def on_stop(self) -> None:
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


def app_options(settings: Settings, partitions: int) -> dict[str, Any]:
    """Faust's settings for this configuration, on input topics of ``partitions``."""
    runtime = settings.runtime
    kafka = settings.kafka
    return {
        "broker": f"kafka://{kafka.bootstrap_servers}",
        "broker_credentials": broker_credentials(kafka),
        "store": runtime.store,
        "datadir": str(runtime.data_dir),
        "web_enabled": False,  # our own server: Faust's would expose /table and /router
        "topic_partitions": partitions,
        "topic_allow_declare": True,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": runtime.commit_interval_ms / 1000,
        "stream_wait_empty": True,
        # The stream iterator takes events already queued without awaiting the
        # channel (faust-streaming's opt-in repair of its Cython fast path).
        "cython_optimizations": True,
        "producer_acks": -1,
        # Changelog writes go a batch per partition (worker.faust.tables): up
        # to this many bytes in one record batch.
        "producer_max_batch_size": 256 * 1024,
        # A parked record (worker.parking) may be a whole Kinesis record and its
        # headers: over Faust's default of 1,000,000 bytes.
        "producer_max_request_size": PARKED_MESSAGE_BYTES,
        "table_cleanup_interval": 60.0,
        "table_standby_replicas": runtime.standby_replicas,
        "topic_replication_factor": kafka.replication_factor,
        # A batch may wait on Kinesis retries; keep the group membership meanwhile.
        "broker_max_poll_interval": 600.0,
        "broker_session_timeout": runtime.session_timeout_ms / 1000,
        # Static membership (KIP-345): a restarted worker with the same id gets
        # its partitions back without a rebalance of the others.
        "consumer_group_instance_id": runtime.instance_id,
        "broker_heartbeat_interval": min(3.0, runtime.session_timeout_ms / 3000),
        "worker_redirect_stdouts": False,
    }


def create_app(settings: Settings, layout: TopicLayout) -> tuple[faust.App, list[Service]]:
    faust_fixes.apply()
    faust_fixes.apply_speedups()
    runtime = settings.runtime
    kafka = settings.kafka
    app = WorkerApp(
        settings.app_id, monitor=LeanMonitor(), **app_options(settings, layout.partitions)
    )
    # Tables are written a batch at a time; Faust's default (100 pending
    # changelog messages) would stall every batch in producer flushes.
    app.producer.buffer.max_messages = max(1000, 4 * runtime.batch_max_events)
    # The control topic (worker.control) is the agent's third input: a command
    # is taken in order with its partition's events and committed like them.
    inputs = app.topic(
        kafka.qualifications_topic,
        kafka.profiles_topic,
        settings.control_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,
    )
    profiles = app.Table("profiles", partitions=layout.partitions, key_type=str)
    memberships = app.Table("memberships", partitions=layout.partitions, key_type=str)
    activations_table = app.Table("activations", partitions=layout.partitions, key_type=str)
    parking_table = app.Table("parking", partitions=layout.partitions, key_type=str)

    metrics.start_series(
        kafka.qualifications_topic,
        kafka.profiles_topic,
        settings.app_id,
        runtime.store,
        settings.control_topic,
    )
    destinations = []
    for destination in settings.destinations:
        observer = metrics.DeliveryMetrics(destination.name, destination.stream, destination.region)
        observer.limits(destination.shard_records_per_s, destination.shard_bytes_per_s)
        writer = KinesisWriter(
            destination.stream,
            AioBotoTransport(destination.transport()),
            WriterConfig(
                max_in_flight=destination.max_in_flight,
                shard_records_per_s=destination.shard_records_per_s,
                shard_bytes_per_s=destination.shard_bytes_per_s,
            ),
            observer,
        )
        destinations.append(Destination(destination, writer))
    memory = MemoryBudget(runtime.max_buffer_bytes)
    tables = FaustTables(profiles, memberships, app.producer, activations_table, parking_table)
    dead_letters = DeadLetterTopic(app, kafka.dlq_topic)
    activations = Activations(
        destinations,
        tables,
        lambda: rebalance_count(app),
        rebalancing=lambda: owned_partitions(app, kafka.qualifications_topic) is None,
    )
    parking_log = KafkaParkingLog(app.producer, kafka)
    parking = Parking(
        destinations,
        tables,
        parking_log,
        dead_letters,
        lambda: owned_partitions(app, kafka.qualifications_topic),
        lambda: rebalance_count(app),
        [settings.parking_topic(d.name) for d in settings.destinations],
    )
    processor = BatchProcessor(
        settings, destinations, tables, dead_letters, memory, activations, parking
    )

    backfiller = Backfiller(
        destinations,
        activations,
        tables,
        dead_letters,
        lambda: owned_partitions(app, kafka.qualifications_topic),
        layout.partitions,
        memory,
        parking=parking,
    )
    runner = BatchRunner(
        processor,
        runtime.batch_max_events,
        runtime.batch_linger_ms / 1000,
        memory,
        # Lanes first: a backfill waits for a destination whose records are parked.
        background=Backgrounds(parking, backfiller),
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
    input_topics = [kafka.qualifications_topic, kafka.profiles_topic, settings.control_topic]
    faust_fixes.fetch.SPANS.track(input_topics)
    sampler = StateSampler(app, {"profiles": profiles, "memberships": memberships}, input_topics)
    repairs = Repairs(app, input_topics, runner.activity, sampler.lag_total)
    health = Health(app, parking.statuses, repairs, runner.stalled_s, runtime.stall_timeout_s)
    services: list[Service] = [
        Writers(writers),
        parking_log,
        WebServer(
            runtime.web_host, runtime.web_port, health.ready, health.alive, health.destinations
        ),
        sampler,
        repairs,
    ]
    return app, services


def run(settings: Settings) -> int:
    """Runs the worker until SIGTERM/SIGINT."""
    log_config = logs.setup(settings.runtime.log_level, logs.secret_values(settings))
    # Each event allocates a few hundred objects: at Python's default (a young
    # collection every 700 allocations) the collector ran several times per
    # event and its older passes over the tables stalled batches
    # (docs/benchmarks.md, latency).
    gc.set_threshold(*GC_THRESHOLDS)
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
