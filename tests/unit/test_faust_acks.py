"""worker.faust.acks: an event skipped at a rebalance does not count in the next generation."""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from worker import faust as fixes

IN = TP("acks-in", 0)


def consumer() -> Any:
    fixes.apply()
    app = faust.App(f"t-acks-{id(object())}", broker="kafka://127.0.0.1:1", store="memory://")
    app.consumer_generation_id = 7
    found: Any = app.consumer
    found.app.topics.acks_enabled_for = lambda topic: True
    return found


def message(offset: int, generation: int) -> ConsumerMessage:
    return ConsumerMessage(
        IN.topic, IN.partition, offset, 0.0, 0, [], b"k", b"v", None, generation_id=generation
    )


def test_an_event_of_the_current_generation_counts() -> None:
    found = consumer()
    assert found.ack(message(5, 7))
    assert found._acked[IN] == [5]


def test_an_event_of_an_earlier_generation_does_not_count() -> None:
    found = consumer()
    skipped = message(5, 6)
    assert not found.ack(skipped)
    assert skipped.acked  # nothing waits for it
    assert found._acked[IN] == []
    assert 5 not in found._acked_index[IN]


async def test_acks_are_forgotten_when_a_partition_is_assigned() -> None:
    found = consumer()
    found._acked[IN] = [5, 6]
    found._acked_index[IN] = {5, 6}

    async def callbacks(assigned: Any, generation_id: int) -> None:
        pass

    found._on_partitions_assigned = callbacks
    await found.on_partitions_assigned({IN}, 8)
    assert found._acked.get(IN, []) == []
    assert not found._acked_index.get(IN)


async def test_the_last_commit_before_a_revocation_starts_from_the_committed_offset() -> None:
    """Faust drops a revoked partition's committed offset and acks before the
    callbacks that wait for the streams and commit; the replacement keeps them
    until those callbacks are done."""
    found = consumer()
    found._committed_offset[IN] = 10
    found._acked[IN] = [10, 11]
    found._acked_index[IN] = {10, 11}
    seen: list[tuple[int | None, list[int]]] = []

    async def callbacks(revoked: Any) -> None:
        found.ack(message(12, 7))  # the last batch, acknowledged while waiting
        seen.append((found._committed_offset.get(IN), list(found._acked[IN])))

    found._on_partitions_revoked = callbacks
    await found.on_partitions_revoked({IN})
    assert seen == [(10, [10, 11, 12])]
    assert IN not in found._acked
    assert found._committed_offset.get(IN) is None
