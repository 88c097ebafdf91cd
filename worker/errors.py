"""Errors that say what the batch loop does with them (worker.batching.is_outage
decides): ``RetryLater`` retries the whole batch, like an outage of Kafka."""

from __future__ import annotations


class RetryLater(Exception):
    """A batch cannot be processed yet, for a reason that passes (the worker's
    own state is being rebuilt after a rebalance): it is retried whole, and
    none of its events is dead-lettered."""
