"""Delivery to Amazon Kinesis Data Streams.

Public API:

- :class:`Record`: one record to put (data, partition key, an opaque tag).
- :class:`KinesisWriter`: puts records with ``PutRecords``, within the service
  limits, retrying failures without ever reordering records of one key.
- :class:`Outcome`: what became of a record (accepted, or rejected for good
  with a :class:`Rejection` reason to dead-letter it).
- :class:`WriterObserver` and :class:`CallReport`: what the writer reports,
  for metrics.
- :class:`Transport` and :class:`AioBotoTransport`: the wire; tests pass a fake.
  :class:`TransportConfig` says where and as whom to call Kinesis.

The package imports nothing else from ``worker``: the configuration format is
mapped to a :class:`TransportConfig` by the caller.
"""

from worker.kinesis._transport import (
    AioBotoTransport,
    PutReply,
    StreamSummary,
    Transport,
    TransportConfig,
    TransportError,
)
from worker.kinesis._writer import (
    MAX_PARTITION_KEY_CHARS,
    CallReport,
    KinesisWriter,
    Outcome,
    Record,
    Rejection,
    WriterConfig,
    WriterObserver,
)

__all__ = [
    "MAX_PARTITION_KEY_CHARS",
    "AioBotoTransport",
    "CallReport",
    "KinesisWriter",
    "Outcome",
    "PutReply",
    "Record",
    "Rejection",
    "StreamSummary",
    "Transport",
    "TransportConfig",
    "TransportError",
    "WriterConfig",
    "WriterObserver",
]
