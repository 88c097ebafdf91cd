"""Prometheus metrics: the one list of what the worker exposes on ``/metrics``.

Labels carry names from configuration (destination, table), Kafka topic and
partition numbers, shard ids and fixed codes; never profile ids, identities or
attribute values. docs/observability.md describes each metric and the
dashboards built on them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from worker import __version__
from worker.kinesis import CallReport, TransportError, WriterObserver
from worker.vocabulary import (
    ControlOutcome,
    DeadLetterReason,
    DeliveryState,
    ExportStatus,
    JobKind,
    ProfileUpdateOutcome,
    QualificationOutcome,
)

# -- input -------------------------------------------------------------------------

EVENTS = Counter(
    "kd_events_total",
    "Input events fully handled, by topic and outcome (exported, duplicate, stale, "
    "unmapped, not_member, no_export, deleted, dead_lettered; taken for commands)",
    ["topic", "outcome"],
)
CONSUMER_LAG = Gauge(
    "kd_consumer_lag",
    "Messages not yet committed (end offset minus committed offset), "
    "per input partition assigned to this worker",
    ["topic", "partition"],
)
ASSIGNED_PARTITIONS = Gauge(
    "kd_assigned_partitions", "Input partitions assigned to this worker", ["topic"]
)
REBALANCES = Counter("kd_rebalances_total", "Consumer group rebalances seen by this worker")
FETCH_RESTARTS = Counter(
    "kd_fetch_restarts_total",
    "Times the fetch watchdog re-sought the input partitions of a ready worker with lag "
    "that received no event for 20 s",
)
HOLE_REPLAYS = Counter(
    "kd_hole_replays_total",
    "Partitions fetched again from an offset that never reached the agent (worker/faust/repair.py)",
    ["topic"],
)
BATCH_SECONDS = Histogram(
    "kd_batch_seconds",
    "Time to process one batch of input events, puts included",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_EVENTS = Histogram(
    "kd_batch_events",
    "Input events per batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
)
BUFFERED_EVENTS = Gauge(
    "kd_buffered_events", "Input events taken from Kafka and not yet done (queued or being put)"
)
BUFFERED_BYTES = Gauge(
    "kd_buffered_bytes",
    "Bytes held against runtime.max_buffer_bytes: input events taken from Kafka and not yet "
    "done (half the budget), records built and not yet accepted and dead letters not yet "
    "written (the other half)",
)
BATCH_FAILURES = Counter(
    "kd_batch_failures_total",
    "Batch attempts that failed (Kafka refused a write, or a bug); each is retried, or split "
    "until the event that causes it is dead-lettered",
)
BATCH_STALLED = Gauge(
    "kd_batch_stalled_seconds",
    "Seconds events have waited with no batch completed (0 when no event waits); "
    "/healthz fails past runtime.stall_timeout_s",
)

# -- delivery ----------------------------------------------------------------------

DESTINATION_INFO = Gauge(
    "kd_destination_info",
    "1 per configured destination: its stream and region",
    ["destination", "stream", "region"],
)
EXPORTS = Counter(
    "kd_exports_total",
    "Records accepted by Kinesis, by destination and status (realized, existing, exited, "
    "updated, backfill, resend)",
    ["destination", "status"],
)
ACTIVATION_SENT = Counter(
    "kd_activation_sent_records_total",
    "Records of current members sent by backfill (a newly mapped segment) or re-send "
    "(a request), by destination and kind",
    ["destination", "kind"],
)
ACTIVATION_REMAINING = Gauge(
    "kd_activation_remaining_records",
    "Records of current members left to send in this worker's partitions, by destination "
    "and kind (known once a partition's members are listed)",
    ["destination", "kind"],
)
ACTIVATION_JOBS = Gauge(
    "kd_activation_jobs",
    "Backfill and re-send jobs pending in this worker's partitions (one per partition)",
    ["destination", "kind"],
)
PARKED = Counter(
    "kd_parked_total",
    "Records written to the destination's parking topic, because its stream did not take "
    "them in time or the destination is parked or paused (worker/parking.py)",
    ["destination"],
)
DRAINED = Counter(
    "kd_drained_total",
    "Parked records accepted by the stream (also counted in kd_exports_total)",
    ["destination"],
)
PARKED_NOW = Gauge(
    "kd_parked_records",
    "Records parked and not yet sent, in this worker's partitions",
    ["destination"],
)
PARKED_OLDEST_AGE = Gauge(
    "kd_parked_oldest_age_seconds",
    "Age of the oldest record parked and not yet sent in this worker's partitions (0: none)",
    ["destination"],
)
DELIVERY_STATE = Gauge(
    "kd_destination_state",
    "1 for the destination's delivery state on this worker: direct, parked (its stream "
    "refused records), draining (sending what was parked), paused (by a command)",
    ["destination", "state"],
)
PUT_RECORDS = Counter(
    "kd_put_records_total",
    "Records sent in PutRecords calls, by destination and result (accepted, failed)",
    ["destination", "result"],
)
PUT_ERRORS = Counter(
    "kd_put_errors_total",
    "Records that failed, by destination and error code; a failed call counts "
    "each of its records with the call's error",
    ["destination", "code"],
)
RETRIES = Counter(
    "kd_retries_total", "Records sent again after a failure, by destination", ["destination"]
)
THROTTLES = Counter(
    "kd_throttles_total",
    "Records refused with ProvisionedThroughputExceededException, by destination and shard",
    ["destination", "shard"],
)
SHARD_RECORDS = Counter(
    "kd_shard_records_total", "Records accepted, by destination and shard", ["destination", "shard"]
)
SHARD_BYTES = Counter(
    "kd_shard_bytes_total",
    "Bytes (data + key) accepted, by destination and shard",
    ["destination", "shard"],
)
SHARD_LIMIT_RECORDS = Gauge(
    "kd_shard_limit_records_per_second",
    "Records per second the worker allows itself per shard (0: no limit)",
    ["destination"],
)
SHARD_LIMIT_BYTES = Gauge(
    "kd_shard_limit_bytes_per_second",
    "Bytes per second the worker allows itself per shard (0: no limit)",
    ["destination"],
)
STREAM_SHARDS = Gauge("kd_stream_shards", "Open shards of the stream", ["destination"])
RATE_LIMIT_WAIT = Counter(
    "kd_rate_limit_wait_seconds_total",
    "Time spent waiting for a shard's write budget",
    ["destination"],
)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_RECORDS_PER_CALL = (1, 5, 10, 25, 50, 100, 200, 300, 400, 500)  # PutRecords takes 500
_BYTES_PER_CALL = (1024, 16384, 65536, 262144, 1048576, 2097152, 5242880)  # and 5 MiB
PUT_LATENCY = Histogram(
    "kd_put_records_seconds", "PutRecords call latency", ["destination"], buckets=_SECONDS
)
PUT_BATCH_RECORDS = Histogram(
    "kd_put_batch_records",
    "Records per PutRecords call",
    ["destination"],
    buckets=_RECORDS_PER_CALL,
)
PUT_BATCH_BYTES = Histogram(
    "kd_put_batch_bytes",
    "Bytes (data + keys) per PutRecords call",
    ["destination"],
    buckets=_BYTES_PER_CALL,
)
IN_FLIGHT = Gauge("kd_put_in_flight", "PutRecords calls in flight", ["destination"])
PENDING_RECORDS = Gauge(
    "kd_pending_records",
    "Records handed to the writer and not yet accepted or rejected",
    ["destination"],
)
LAST_SUCCESS = Gauge(
    "kd_last_successful_put_timestamp_seconds",
    "Unix time of the last PutRecords call that had a record accepted",
    ["destination"],
)
STREAM_WRITABLE = Gauge(
    "kd_stream_writable", "1 when the stream was found active and takes writes", ["destination"]
)
DEAD_LETTERS = Counter("kd_dead_letters_total", "Dead letters written, by reason", ["reason"])

# -- state -------------------------------------------------------------------------

TABLE_KEYS = Gauge("kd_table_keys", "Keys in a table's partitions active on this worker", ["table"])
RECOVERY_REMAINING = Gauge(
    "kd_recovery_remaining_records",
    "Changelog records still to read before tables are recovered (active or standby)",
    ["kind"],
)
RECOVERING = Gauge("kd_recovering", "1 while table recovery is in progress")
READY = Gauge(
    "kd_ready", "1 when tables are recovered and no rebalance is under way (parked streams count)"
)
WORKER_INFO = Gauge(
    "kd_worker_info",
    "1, with the worker's version, app id and store",
    ["version", "app_id", "store"],
)


class DeliveryMetrics(WriterObserver):
    """One destination's writer reporting into the metrics above."""

    def __init__(self, destination: str, stream: str, region: str) -> None:
        self.destination = destination
        DESTINATION_INFO.labels(destination=destination, stream=stream, region=region).set(1)
        # Label sets known at start exist from the first scrape, at 0.
        for status in ExportStatus:
            EXPORTS.labels(destination=destination, status=status)
        for kind in JobKind:
            ACTIVATION_SENT.labels(destination=destination, kind=kind)
            ACTIVATION_REMAINING.labels(destination=destination, kind=kind).set(0)
            ACTIVATION_JOBS.labels(destination=destination, kind=kind).set(0)
        RATE_LIMIT_WAIT.labels(destination=destination)
        PARKED.labels(destination=destination)
        DRAINED.labels(destination=destination)
        set_parking(destination, DeliveryState.DIRECT, 0, 0.0)
        STREAM_WRITABLE.labels(destination=destination).set(0)
        self._in_flight = IN_FLIGHT.labels(destination=destination)
        self._in_flight.set(0)
        self._pending = PENDING_RECORDS.labels(destination=destination)
        self._pending.set(0)
        self._accepted = PUT_RECORDS.labels(destination=destination, result="accepted")
        self._failed = PUT_RECORDS.labels(destination=destination, result="failed")
        self._latency = PUT_LATENCY.labels(destination=destination)
        self._batch_records = PUT_BATCH_RECORDS.labels(destination=destination)
        self._batch_bytes = PUT_BATCH_BYTES.labels(destination=destination)
        self._retries = RETRIES.labels(destination=destination)

    def limits(self, records_per_s: int, bytes_per_s: int) -> None:
        SHARD_LIMIT_RECORDS.labels(destination=self.destination).set(records_per_s)
        SHARD_LIMIT_BYTES.labels(destination=self.destination).set(bytes_per_s)

    def call_started(self) -> None:
        self._in_flight.inc()

    def call_done(self, report: CallReport) -> None:
        self._in_flight.dec()
        self._latency.observe(report.elapsed)
        self._batch_records.observe(report.records)
        self._batch_bytes.observe(report.size)
        if report.retried:
            self._retries.inc(report.retried)
        accepted, failed = report.accepted, report.failed
        if accepted:
            self._accepted.inc(accepted)
            # No series before the first success: 0 would read as "56 years ago".
            LAST_SUCCESS.labels(destination=self.destination).set_to_current_time()
            for shard, count in report.accepted_by_shard.items():
                SHARD_RECORDS.labels(destination=self.destination, shard=shard).inc(count)
            for shard, size in report.accepted_bytes_by_shard.items():
                SHARD_BYTES.labels(destination=self.destination, shard=shard).inc(size)
        if failed:
            self._failed.inc(failed)
            for code, count in report.failed_by_code.items():
                PUT_ERRORS.labels(destination=self.destination, code=code).inc(count)
            for shard, count in report.throttled_by_shard.items():
                THROTTLES.labels(destination=self.destination, shard=shard).inc(count)

    def writable_changed(self, writable: bool, error: TransportError | None) -> None:
        STREAM_WRITABLE.labels(destination=self.destination).set(1 if writable else 0)

    def shards_listed(self, count: int) -> None:
        STREAM_SHARDS.labels(destination=self.destination).set(count)

    def rate_limited(self, seconds: float) -> None:
        RATE_LIMIT_WAIT.labels(destination=self.destination).inc(seconds)

    def pending(self, records: int) -> None:
        self._pending.set(records)


def set_parking(destination: str, state: DeliveryState, parked: int, oldest_age_s: float) -> None:
    for each in DeliveryState:
        DELIVERY_STATE.labels(destination=destination, state=each).set(1 if each is state else 0)
    PARKED_NOW.labels(destination=destination).set(parked)
    PARKED_OLDEST_AGE.labels(destination=destination).set(oldest_age_s)


def start_series(
    qualifications_topic: str,
    profiles_topic: str,
    app_id: str,
    store: str,
    control_topic: str | None = None,
) -> None:
    """Creates the series known in advance, at 0, before the first scrape: a
    counter that appears at 1 has no increase() to alert on."""
    WORKER_INFO.labels(version=__version__, app_id=app_id, store=store).set(1)
    if control_topic is not None:
        for command in ControlOutcome:
            EVENTS.labels(topic=control_topic, outcome=command)
    for outcome in QualificationOutcome:
        EVENTS.labels(topic=qualifications_topic, outcome=outcome)
    for update in ProfileUpdateOutcome:
        EVENTS.labels(topic=profiles_topic, outcome=update)
    for reason in DeadLetterReason:
        DEAD_LETTERS.labels(reason=reason)
    for topic in (qualifications_topic, profiles_topic):
        HOLE_REPLAYS.labels(topic=topic)
    READY.set(0)
