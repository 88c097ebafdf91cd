"""Activates audience segments to Amazon Kinesis.

An open re-implementation of the Amazon Kinesis destination of Adobe Real-Time
CDP: segment-qualification events from Kafka become AEP-format JSON records in
a customer's Kinesis data stream.
"""

__version__ = "0.1.0"
