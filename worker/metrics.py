"""Prometheus metrics. Labels carry names from configuration and fixed codes,
never profile ids, identities or attribute values."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("kd_events_total", "Input events by topic and outcome", ["topic", "outcome"])
EXPORTS = Counter(
    "kd_exports_total",
    "Records accepted by Kinesis, by destination and status",
    ["destination", "status"],
)
DEAD_LETTERS = Counter("kd_dead_letters_total", "Dead letters written, by reason", ["reason"])
PUT_RECORDS = Counter(
    "kd_put_records_total",
    "Records sent in PutRecords calls, by stream and result",
    ["stream", "result"],
)
RETRIES = Counter(
    "kd_retries_total", "Records or calls retried, by stream and error code", ["stream", "code"]
)
PUT_LATENCY = Histogram(
    "kd_put_records_seconds",
    "PutRecords call latency",
    ["stream"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STREAM_WRITABLE = Gauge(
    "kd_stream_writable", "1 when the last put to the stream worked", ["stream"]
)
BATCH_SECONDS = Histogram(
    "kd_batch_seconds",
    "Time to process one batch of input events, puts included",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BUFFERED_BYTES = Gauge(
    "kd_buffered_bytes", "Input bytes taken from Kafka and not yet done (queued or being put)"
)
READY = Gauge("kd_ready", "1 when tables are recovered and every stream is writable")
