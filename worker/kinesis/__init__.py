"""Delivery to Amazon Kinesis Data Streams.

Public API:

- :class:`Record`: one record to put (data, partition key, an opaque tag).
- :class:`KinesisWriter`: puts records with ``PutRecords``, within the service
  limits, retrying failures without ever reordering records of one key.
- :class:`Outcome`: what became of a record (accepted, or rejected for good
  with a reason to dead-letter it).
- :class:`Transport` and :class:`AioBotoTransport`: the wire; tests pass a fake.
"""

from worker.kinesis._transport import (
    AioBotoTransport,
    PutReply,
    StreamSummary,
    Transport,
    TransportError,
)
from worker.kinesis._writer import KinesisWriter, Outcome, Record, WriterConfig

__all__ = [
    "AioBotoTransport",
    "KinesisWriter",
    "Outcome",
    "PutReply",
    "Record",
    "StreamSummary",
    "Transport",
    "TransportError",
    "WriterConfig",
]
