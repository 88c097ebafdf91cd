"""Samples what Faust knows but does not expose: lag, table sizes, recovery.

Faust's own Prometheus sensor has offsets and latencies but no consumer lag
(REFERENCE); lag here is the partition's end offset minus the offset this
group committed, for the input partitions assigned to this worker, so summing
over workers gives the group's lag without double counting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from mode import Service

from worker import metrics
from worker._faust_patches import skipped_offset

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 5.0
# An offset below acknowledged ones that stays unacknowledged this long was
# skipped by Faust's consumer (worker/_faust_patches.py): it is fetched again.
HOLE_REPLAY_AFTER_S = 15.0
# Ready, lag waiting, nothing buffered and no event for this long: fetching is stuck.
STUCK_AFTER_S = 20.0


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
        self,
        app: Any,
        tables: Mapping[str, Any],
        input_topics: Collection[str],
        activity: Callable[[], tuple[float, int]] | None = None,
        **kwargs: Any,
    ) -> None:
        """``activity`` gives (time of the last event taken, events buffered)."""
        super().__init__(**kwargs)
        self.activity = activity
        # Set when fetching stayed stuck after a restart of it: /healthz then
        # fails, so the orchestrator restarts the worker (a new process resumes).
        self.stuck = False
        self._restarts = 0
        self._idle_since: float | None = None
        self._lag_total = 0
        self.app = app
        self.tables = tables
        self.input_topics = frozenset(input_topics)
        self._holes: dict[Any, tuple[int, float]] = {}  # tp -> (committed, first seen)
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
        now = asyncio.get_running_loop().time()
        await self.replay_holes(now)
        await self.unstick(now)

    async def unstick(self, now: float) -> None:
        """Restarts fetching when a ready worker with lag receives nothing.

        Seen in about 3 of 22 kill tests with the recovery patch of
        worker/_faust_patches.py: a restarted worker, ready, every input
        partition lagging, received no event at all. Resuming and seeking the
        partitions is tried first; if the worker stays idle, ``stuck`` is set
        and /healthz fails, so the orchestrator restarts it (a new process
        resumes from the committed offsets, which loses nothing).
        """
        recovery = self.app.tables.recovery
        if self.activity is None or self.app.rebalancing or not recovery.completed.is_set():
            self._idle_since = None
            return
        last_event, buffered = self.activity()
        if self._lag_total == 0 or buffered > 0:
            self._idle_since = None
            self._restarts = 0
            self.stuck = False
            return
        if self._idle_since is not None and last_event > self._idle_since:
            self._restarts = 0  # events came in since the last check
            self.stuck = False
        since = max(last_event, self._idle_since if self._idle_since is not None else now)
        self._idle_since = since
        if now - since < STUCK_AFTER_S:
            return
        consumer = self.app.consumer
        inputs = {tp for tp in consumer.assignment() if tp.topic in self.input_topics}
        self._restarts += 1
        self.stuck = self._restarts > 1
        log.warning(
            "no event for %.0fs with %d messages waiting: resuming and seeking %d partitions%s",
            now - since,
            self._lag_total,
            len(inputs),
            "; still stuck after that, /healthz now fails" if self.stuck else "",
        )
        metrics.FETCH_RESTARTS.inc()
        consumer.resume_partitions(inputs)
        self.app.flow_control.resume()
        consumer.resume_flow()
        await consumer.perform_seek()
        self._idle_since = now

    async def replay_holes(self, now: float) -> None:
        """Fetches a partition again from its committed offset when an event there
        never reached the agent while later ones did.

        Batches are handled in order, so within a partition acknowledgements
        come in offset order: acked offsets above an unacknowledged committed
        one mean Faust's consumer skipped that event (seen around rebalances).
        Faust would have committed past it (lost); the patched commit waits
        instead, and this replays the partition from the hole, exactly as a
        restart would: events already handled replay as duplicates.
        """
        consumer = self.app.consumer
        if self.app.rebalancing:
            self._holes.clear()
            return
        seen: dict[Any, tuple[int, float]] = {}
        for tp in consumer.assignment():
            if tp.topic not in self.input_topics:
                continue
            committed = skipped_offset(consumer, tp)
            if committed is None:
                continue
            first = self._holes.get(tp)
            since = first[1] if first is not None and first[0] == committed else now
            if now - since < HOLE_REPLAY_AFTER_S:
                seen[tp] = (committed, since)
                continue
            log.warning(
                "offset %d of %s[%d] was skipped by the consumer; fetching again from it",
                committed,
                tp.topic,
                tp.partition,
                extra={"topic": tp.topic, "partition": tp.partition, "offset": committed},
            )
            metrics.HOLE_REPLAYS.labels(topic=tp.topic).inc()
            await consumer.seek(tp, committed)
        self._holes = seen

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
