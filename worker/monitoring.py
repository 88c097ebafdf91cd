"""Samples what Faust knows but does not expose: lag, table sizes, recovery.

Faust's own Prometheus sensor has offsets and latencies but no consumer lag
(REFERENCE); lag here is the partition's end offset minus the offset this
group committed, for the input partitions assigned to this worker, so summing
over workers gives the group's lag without double counting.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from mode import Service

from worker import metrics

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 5.0


def table_size(table: Any) -> int:
    """Keys in the table's active partitions on this worker.

    RocksDB: the store's own estimate (counting keys would read them all every
    few seconds); it may be off by a few, including one offset key per partition.
    """
    store = table.data
    dbs = getattr(store, "_dbs_for_actives", None)
    if dbs is not None:
        return sum(int(db.property_int_value("rocksdb.estimate-num-keys") or 0) for db in dbs())
    return len(store)


class StateSampler(Service):
    def __init__(
        self, app: Any, tables: Mapping[str, Any], input_topics: Collection[str], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.tables = tables
        self.input_topics = frozenset(input_topics)
        for topic in self.input_topics:
            metrics.ASSIGNED_PARTITIONS.labels(topic=topic).set(0)
        for name in tables:
            metrics.TABLE_KEYS.labels(table=name).set(0)
        for kind in ("active", "standby"):
            metrics.RECOVERY_REMAINING.labels(kind=kind).set(0)

    @Service.timer(SAMPLE_INTERVAL_S)
    async def _sample(self) -> None:
        try:
            await self.sample()
        except Exception:  # a sample missed is not worth stopping for
            log.debug("sampling failed", exc_info=True)

    async def sample(self) -> None:
        self._sample_recovery()
        for name, table in self.tables.items():
            metrics.TABLE_KEYS.labels(table=name).set(table_size(table))
        await self._sample_lag()

    def _sample_recovery(self) -> None:
        recovery = self.app.tables.recovery
        metrics.RECOVERING.set(1 if recovery.in_recovery else 0)
        metrics.RECOVERY_REMAINING.labels(kind="active").set(recovery.active_remaining_total())
        metrics.RECOVERY_REMAINING.labels(kind="standby").set(recovery.standby_remaining_total())

    async def _sample_lag(self) -> None:
        consumer = self.app.consumer
        assigned = [tp for tp in consumer.assignment() if tp.topic in self.input_topics]
        highwaters = await consumer.highwaters(*assigned) if assigned else {}
        # Faust keeps the committed offset of each assigned partition (read from
        # the group at assignment, then updated on each commit).
        committed = consumer._committed_offset
        counts = dict.fromkeys(self.input_topics, 0)
        metrics.CONSUMER_LAG.clear()
        for tp in assigned:
            counts[tp.topic] += 1
            end = highwaters.get(tp)
            if end is None:
                continue
            done = committed.get(tp) or 0
            metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, end - done)
            )
        for topic, count in counts.items():
            metrics.ASSIGNED_PARTITIONS.labels(topic=topic).set(count)
