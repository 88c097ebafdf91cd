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
from worker.faust import state as faust_state

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 5.0


class StateSampler(Service):
    def __init__(
        self,
        app: Any,
        tables: Mapping[str, Any],
        input_topics: Collection[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._lag_total = 0
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
            metrics.TABLE_KEYS.labels(table=name).set(faust_state.table_size(table))
        await self._sample_lag()

    def lag_total(self) -> int:
        """Input messages waiting for this worker at the last sample."""
        return self._lag_total

    def _sample_recovery(self) -> None:
        recovery = self.app.tables.recovery
        metrics.RECOVERING.set(1 if recovery.in_recovery else 0)
        metrics.RECOVERY_REMAINING.labels(kind="active").set(recovery.active_remaining_total())
        metrics.RECOVERY_REMAINING.labels(kind="standby").set(recovery.standby_remaining_total())

    async def _sample_lag(self) -> None:
        consumer = self.app.consumer
        assigned = [tp for tp in consumer.assignment() if tp.topic in self.input_topics]
        highwaters = await consumer.highwaters(*assigned) if assigned else {}
        committed = faust_state.committed_offsets(consumer)
        counts = dict.fromkeys(self.input_topics, 0)
        lag_total = 0
        metrics.CONSUMER_LAG.clear()
        for tp in assigned:
            counts[tp.topic] += 1
            end = highwaters.get(tp)
            if end is None:
                continue
            lag = max(0, end - (committed.get(tp) or 0))
            lag_total += lag
            metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
        for topic, count in counts.items():
            metrics.ASSIGNED_PARTITIONS.labels(topic=topic).set(count)
        self._lag_total = lag_total
