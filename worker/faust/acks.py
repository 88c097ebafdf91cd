"""Acknowledgements from an earlier consumer generation do not count.

faust-streaming 0.15.3's stream skips an event whose generation is not the
consumer's current one (or that arrives while flow control is off, during a
rebalance) and acknowledges it anyway, also on ``noack()`` streams, so that
waiting for empty streams ends (``Stream._py_aiter``). Such an event was not
handled. Its acknowledgement can land after the revocation cleared the
partition's acks, and then counts in the next generation: a commit could pass
the event before its replay was handled.

So: an acknowledgement of an event from another generation is not recorded,
and the acks of a partition are forgotten when it is assigned (whatever they
were, the partition is read again from its committed offset). Events of an
earlier generation are always delivered again, so nothing waits for them.

Revocation: 0.15.3's ``Consumer.on_partitions_revoked`` forgets the revoked
partitions' acks and committed offsets *before* the callbacks that wait for
the streams to empty and commit; the last commit then has no committed offset
to start from and the events handled since the previous commit are handled
again by the next owner. Here they are forgotten after the callbacks.

Proved by tests/unit/test_faust_acks.py.
"""

from __future__ import annotations

import contextlib
from typing import Any

from faust.transport import consumer as faust_consumer
from faust.utils.tracing import traced_from_parent_span
from mode import Service

transitions = Service.transitions_to(faust_consumer.CONSUMER_PARTITIONS_REVOKED)

original_ack = faust_consumer.Consumer.ack
original_on_partitions_assigned = faust_consumer.Consumer.on_partitions_assigned


def ack(self: Any, message: Any) -> bool:
    """Wraps ``faust.transport.consumer.Consumer.ack`` (0.15.3)."""
    recorded: bool = original_ack(self, message)
    generation = message.generation_id
    if recorded and generation is not None and generation != self.app.consumer_generation_id:
        tp, offset = message.tp, message.offset
        self._acked_index[tp].discard(offset)
        with contextlib.suppress(ValueError):
            self._acked[tp].remove(offset)
        self._n_acked -= 1
        return False
    return recorded


async def on_partitions_assigned(self: Any, assigned: Any, generation_id: int = 0) -> None:
    """Wraps ``faust.transport.consumer.Consumer.on_partitions_assigned`` (0.15.3)."""
    for tp in assigned:
        self._acked.pop(tp, None)
        self._acked_index.pop(tp, None)
    await original_on_partitions_assigned(self, assigned, generation_id)


async def on_partitions_revoked(self: Any, revoked: Any) -> None:
    """Replaces ``faust.transport.consumer.Consumer.on_partitions_revoked`` (0.15.3):
    the same steps, with the revoked partitions' bookkeeping dropped last."""
    span = self.app._start_span_from_rebalancing("on_partitions_revoked")
    trace = traced_from_parent_span(span)
    with span:
        if self._active_partitions is not None:
            self._active_partitions.difference_update(revoked)
        self._paused_partitions.difference_update(revoked)
        try:
            await trace(self._on_partitions_revoked, partitions=revoked)(revoked)
        finally:
            for tp in revoked:
                self._gap.pop(tp, None)
                self._acked.pop(tp, None)
                self._acked_index.pop(tp, None)
                self._read_offset.pop(tp, None)
                self._committed_offset.pop(tp, None)


def apply() -> None:
    faust_consumer.Consumer.ack = ack  # type: ignore[method-assign]
    # Faust decorates it to record the consumer's state; so does the replacement.
    faust_consumer.Consumer.on_partitions_revoked = transitions(on_partitions_revoked)  # type: ignore[method-assign]
    faust_consumer.Consumer.on_partitions_assigned = on_partitions_assigned  # type: ignore[method-assign]
