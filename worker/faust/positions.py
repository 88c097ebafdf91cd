"""Re-seeking partitions without losing what has no committed offset.

aiokafka's ``seek_to_committed`` (and so Faust's ``perform_seek``) seeks only
partitions that have a committed offset above 0 and leaves the others where
they are; if records were fetched and dropped there, the position is past them
and they are never read: lost once later offsets are committed. Such
partitions go to where fetching began, which is the reset position
(``consumer_auto_offset_reset="earliest"``), or to the beginning if nothing
was fetched yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka.structs import TopicPartition

from worker.faust import commits


async def reposition(consumer: Any, tps: Iterable[Any]) -> dict[Any, int | None]:
    """Seeks each partition to its committed offset, or where fetching began
    when nothing was committed (the beginning if nothing was fetched either)."""
    targets: dict[Any, int | None] = {}
    for tp in tps:
        target = commits.start_of(consumer, tp)
        if target is None:
            # aiokafka insists on its own TopicPartition type here.
            await consumer._thread.seek_to_beginning(TopicPartition(tp.topic, tp.partition))
            consumer._read_offset[tp] = None
        else:
            await seek(consumer, tp, target)
        targets[tp] = target
    return targets


async def seek(consumer: Any, tp: Any, offset: int) -> None:
    """Seeks in the consumer thread. Faust's ``Consumer.seek`` calls aiokafka
    from the event loop's thread while the consumer thread may be fetching."""
    await consumer.seek_wait({TopicPartition(tp.topic, tp.partition): offset})


async def seek_to_committed(consumer: Any, tps: Iterable[Any]) -> None:
    """Faust's ``perform_seek``, then the partitions of ``tps`` that have no
    committed offset to the reset position."""
    await consumer.perform_seek()
    fresh = [tp for tp in tps if not consumer._committed_offset.get(tp)]
    if fresh:
        await reposition(consumer, fresh)
