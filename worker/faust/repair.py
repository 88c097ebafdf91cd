"""Last-resort repairs of a consumer that stopped delivering, each counted.

With the fixes of this package neither should fire; both stay as a safety net
and their counters are expected to read 0 (docs/observability.md).

- **Hole replay** (``kd_hole_replays_total``): an offset that holds a
  partition's commits back while later offsets were acknowledged never
  reached the agent (batches are acknowledged in offset order). After
  ``HOLE_REPLAY_AFTER_S`` the partition is fetched again from it, exactly as a
  restart would: events already handled replay as duplicates, none is lost.
- **Fetch watchdog** (``kd_fetch_restarts_total``): a ready worker with lag,
  nothing buffered, that receives no event for ``STUCK_AFTER_S`` logs its
  consumer's active and paused partitions and positions, resumes and
  re-seeks its input partitions; if it stays idle, ``stuck`` is set and
  /healthz fails so that the orchestrator restarts it.

Re-seeking goes through ``positions.reposition``: a partition without a
committed offset goes to where fetching began, not "to committed".

Proved by tests/unit/test_faust_repair.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from typing import Any

from mode import Service

from worker import metrics
from worker.faust import commits, fetch, positions

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0
HOLE_REPLAY_AFTER_S = 15.0
STUCK_AFTER_S = 20.0


class Repairs(Service):
    def __init__(
        self,
        app: Any,
        input_topics: Collection[str],
        activity: Callable[[], tuple[float, int]],
        lag: Callable[[], int],
        **kwargs: Any,
    ) -> None:
        """``activity`` gives (time of the last event taken, events buffered);
        ``lag`` the input messages waiting for this worker."""
        super().__init__(**kwargs)
        self.app = app
        self.input_topics = frozenset(input_topics)
        self.activity = activity
        self.lag = lag
        self.stuck = False
        self._restarts = 0
        self._idle_since: float | None = None
        self._holes: dict[Any, tuple[int, float]] = {}  # tp -> (offset, first seen)
        # active changelog tp behind its highwater -> (offset, since when)
        self._recovery_seen: dict[Any, tuple[int, float]] = {}

    @Service.timer(CHECK_INTERVAL_S)
    async def _check(self) -> None:
        try:
            now = asyncio.get_running_loop().time()
            await self.replay_holes(now)
            await self.watchdog(now)
            await self.recovery_watch(now)
        except Exception:  # a check missed is not worth stopping for
            log.debug("repair check failed", exc_info=True)

    def _inputs(self) -> list[Any]:
        return [tp for tp in self.app.consumer.assignment() if tp.topic in self.input_topics]

    async def replay_holes(self, now: float) -> None:
        consumer = self.app.consumer
        if self.app.rebalancing:
            self._holes.clear()
            return
        seen: dict[Any, tuple[int, float]] = {}
        for tp in self._inputs():
            offset = commits.skipped_offset(consumer, tp)
            if offset is None:
                continue
            first = self._holes.get(tp)
            since = first[1] if first is not None and first[0] == offset else now
            if now - since < HOLE_REPLAY_AFTER_S:
                seen[tp] = (offset, since)
                continue
            log.warning(
                "offset %d of %s[%d] never reached the agent; fetching again from it",
                offset,
                tp.topic,
                tp.partition,
                extra={"topic": tp.topic, "partition": tp.partition, "offset": offset},
            )
            metrics.HOLE_REPLAYS.labels(topic=tp.topic).inc()
            await positions.seek(consumer, tp, offset)
        self._holes = seen

    async def watchdog(self, now: float) -> None:
        recovery = self.app.tables.recovery
        if self.app.rebalancing or not recovery.completed.is_set():
            self._idle_since = None
            return
        last_event, buffered = self.activity()
        lag = self.lag()
        if lag == 0 or buffered > 0:
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
        inputs = self._inputs()
        self._restarts += 1
        self.stuck = self._restarts > 1
        at = await _positions(consumer, inputs)
        log.warning(
            "no event for %.0fs with %d messages waiting: re-seeking %d input partitions%s; "
            "active %s, paused %s, positions %s, committed %s, first fetched %s",
            now - since,
            lag,
            len(inputs),
            "; still stuck after that, /healthz now fails" if self.stuck else "",
            _names(consumer._active_partitions or ()),
            _names(consumer._paused_partitions or ()),
            at,
            {f"{tp.topic}[{tp.partition}]": consumer._committed_offset.get(tp) for tp in inputs},
            {f"{tp.topic}[{tp.partition}]": fetch.SPANS.first_fetched(tp) for tp in inputs},
        )
        metrics.FETCH_RESTARTS.inc()
        consumer.resume_partitions(inputs)
        self.app.flow_control.resume()
        consumer.resume_flow()
        await positions.reposition(consumer, inputs)
        self._idle_since = now

    async def recovery_watch(self, now: float) -> None:
        """Says what the consumer holds when a table recovery stops progressing:
        an active changelog partition behind its highwater that received
        nothing for ``STUCK_AFTER_S`` (Faust only says "No event received")."""
        recovery = self.app.tables.recovery
        if not recovery.in_recovery:  # (``completed`` is never cleared)
            self._recovery_seen = {}
            return
        offsets = dict(recovery.active_offsets)
        highwaters = dict(recovery.active_highwaters)
        behind = [tp for tp in recovery.active_tps if offsets.get(tp, -1) < highwaters.get(tp, -1)]
        seen = self._recovery_seen
        stuck = []
        for tp in behind:
            first, offset = seen.get(tp), offsets.get(tp, -1)
            if first is None or first[0] != offset:
                seen[tp] = (offset, now)
            elif now - first[1] >= STUCK_AFTER_S:
                stuck.append(tp)
        self._recovery_seen = {tp: seen[tp] for tp in behind}
        if not stuck:
            return
        consumer = self.app.consumer
        at = await _positions(consumer, stuck)
        log.warning(
            "table recovery stalled on %s: offsets %s, highwaters %s, positions %s, "
            "read offsets %s; active %s, paused %s, buffered %s; flow active %s, "
            "flow control %s, suspend flow %s, changelog queue %d",
            _names(stuck),
            {f"{tp.topic}[{tp.partition}]": offsets.get(tp) for tp in stuck},
            {f"{tp.topic}[{tp.partition}]": highwaters.get(tp) for tp in stuck},
            at,
            {f"{tp.topic}[{tp.partition}]": consumer._read_offset.get(tp) for tp in stuck},
            _names(consumer._active_partitions or ()),
            _names(consumer._paused_partitions or ()),
            _names(consumer._buffered_partitions or ()),
            consumer.flow_active,
            self.app.flow_control.is_active(),
            consumer.suspend_flow.is_set(),
            self.app.tables.changelog_queue.qsize(),
        )


async def _positions(consumer: Any, tps: Iterable[Any]) -> dict[str, object]:
    at: dict[str, object] = {}
    for tp in tps:
        try:
            at[f"{tp.topic}[{tp.partition}]"] = await consumer.position(tp)
        except Exception as exc:  # the state is what we want to see
            at[f"{tp.topic}[{tp.partition}]"] = repr(exc)
    return at


def _names(tps: Iterable[Any]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)
