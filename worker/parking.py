"""Parking: a destination whose stream refuses records never holds the others.

Offsets are committed once every destination took a batch's records. A stream
that refuses them (deleted, access denied, a KMS key disabled, an outage)
would then stop every destination of the worker. Instead, once it has accepted
none of a batch's records for ``park_after_s`` (at once for errors that no
retry soon heals, ``TransportError.fatal``), the records it did not take are
written to the destination's parking topic in Kafka, and the batch goes on.

- **Lanes.** The parking topic ``<app_id>-parked-<destination>`` has the
  input topics' partition count. A record is parked in the partition of the
  input event it came from: the worker that owns input partition ``p`` parks
  and drains partition ``p`` of every parking topic, so the lanes move with
  the partitions on rebalances, like the tables.
- **Order.** While a lane holds records not yet sent (or the destination is
  parked, or paused), every new record of that lane is parked too, behind
  them: no later record of a profile overtakes a parked one.
- **Durability.** Parked records are written (acks=all) before the batch is
  acknowledged; how far each lane was sent (``drained``) and whether it is
  paused are in the ``parking`` table (key ``<partition>/<destination>``),
  written once the stream accepted what it covers. A crash resends at most
  the slice in flight; nothing parked is lost.
- **Probe and drain.** Between two batches (the loop of worker.batching, as
  for backfills), a parked destination is tried again every ``park_probe_s``
  with its oldest parked records, in one attempt. Once the stream accepts
  them, its lanes are drained a slice at a time, in order, then go direct.
- **Pause.** ``pause``/``resume`` commands (worker.control) park a
  destination by hand, per partition (the command is in every one).

What a worker knows of the lanes holds for one assignment (Faust's
rebalance count): after a rebalance they are read again from the table and
from Kafka's end offsets before the next batch (``prepare``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker import metrics
from worker.backfill import DRAIN_PATIENCE_S
from worker.batching import backoff_s, log_failure
from worker.errors import RetryLater
from worker.pipeline import DeadLetterSink, Destination, Parked, rejected_letter
from worker.vocabulary import DeliveryState, ExportStatus

log = logging.getLogger(__name__)

# Records sent per drain slice (one PutRecords call at most).
SLICE = 500
IDLE_POLL_S = 1.0
REPORT_EVERY_S = 1.0
# Between two batches, draining lanes go on for this long.
DRAIN_BUDGET_S = 0.25


class ParkingLog(Protocol):
    """The parking topics in Kafka (worker.parking_log)."""

    async def write(self, topic: str, partition: int, records: Sequence[Parked]) -> list[int]:
        """Writes ``records`` in order; returns their offsets once Kafka has them."""

    async def end_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]: ...

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Parked]:
        """Up to ``limit`` records from ``offset`` on, in order (fewer: none more yet)."""

    async def trim(self, topic: str, partition: int, before: int) -> None:
        """Deletes the records before offset ``before``."""


class ParkingTables(Protocol):
    def get_parking(self, destination: str, partition: int) -> dict[str, Any] | None: ...

    def put_parking(
        self, destination: str, value: dict[str, Any] | None, partition: int
    ) -> None: ...

    async def flush(self) -> None: ...


class NotPlanned(RetryLater):
    """The lanes are not read for the current assignment yet (a rebalance began):
    the batch is retried once they are (``prepare``)."""


@dataclass(slots=True)
class _Lane:
    """One destination's parking partition, as this worker owns it."""

    drained: int  # the first offset not sent yet
    end: int  # the next offset to be written
    paused: bool = False
    oldest: float | None = None  # when the record at ``drained`` was parked
    # Offsets past ``drained`` already sent (a slice partly accepted).
    sent: set[int] = field(default_factory=set)

    @property
    def backlog(self) -> int:
        return max(0, self.end - self.drained - len(self.sent))

    def stored(self) -> dict[str, Any]:
        return {"drained": self.drained, "paused": self.paused}


@dataclass(slots=True)
class _Fault:
    reason: str
    since: float
    probe_at: float


@dataclass(frozen=True, slots=True)
class DestinationStatus:
    """What /readyz and the metrics say of one destination."""

    name: str
    state: DeliveryState
    reason: str | None
    parked: int  # records parked and not sent, in this worker's lanes
    oldest_age_s: float  # 0 when none


Assignment = Callable[[], tuple[int, frozenset[int]] | None]


class Parking:
    """Routes each destination's records (direct or parked), drains the lanes."""

    def __init__(
        self,
        destinations: Sequence[Destination],
        tables: ParkingTables,
        parking_log: ParkingLog,
        dead_letters: DeadLetterSink,
        assignment: Assignment,
        generation: Callable[[], int],
        topics: Sequence[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``topics``: each destination's parking topic; ``assignment``: Faust's
        rebalance count and owned input partitions (None while one is under
        way); ``generation``: the rebalance count alone."""
        self._destinations = list(destinations)
        self._tables = tables
        self._log = parking_log
        self._dead_letters = dead_letters
        self._assignment = assignment
        self._generation = generation
        self._topics = list(topics)
        self._clock = clock
        self._planned: int | None = None  # the rebalance count the lanes were read at
        self._replan = False
        self._lanes: list[dict[int, _Lane]] = [{} for _ in self._destinations]
        # Lanes a batch needed before they were read (Parking._lane), never drained.
        self._interim: dict[tuple[int, int], _Lane] = {}
        self._faults: list[_Fault | None] = [None for _ in self._destinations]
        # A destination whose parking log failed is left alone until then.
        self._held_until = [0.0 for _ in self._destinations]
        # Destinations whose lanes the last plan could not read; read again at _plan_at.
        self._unread: set[int] = set()
        self._plan_at = 0.0
        self._plan_failures = 0
        self._retry_at = 0.0
        self._failures = 0
        self._reported_at = 0.0
        # (destination, partition, offset) of lanes emptied in this run: trimmed
        # once the table holding their cursor is flushed.
        self._emptied: list[tuple[int, int, int]] = []

    # -- routing (during a batch) ----------------------------------------------------

    def _lane(self, index: int, partition: int) -> _Lane:
        """The lane of an event's partition, for a batch.

        Lanes read for the current assignment, or, while a rebalance is under
        way, for the one just before it: Faust waits for the batch in flight
        before it hands its partitions over, so they are still this worker's.
        Routing never waits for lanes to be read (a batch waiting for the next
        assignment would hold the rebalance forever): a lane not read is
        *interim*, with its cursor and pause from the table, and counts as
        holding records until the log's end is read, so its records are parked
        behind whatever the log holds.
        """
        lane = self._interim.get((index, partition))
        if lane is None and self._planned is not None:
            try:
                generation = self._generation()
                during = self._planned == generation - 1 and self._assignment() is None
            except Exception:  # Faust's state unreadable: an interim lane, which parks
                generation, during = -1, False
            if self._planned == generation or during:
                lane = self._lanes[index].get(partition)
        if lane is None:
            stored = self._tables.get_parking(self._destinations[index].name, partition) or {}
            drained = int(stored.get("drained", 0))
            paused = bool(stored.get("paused", False))
            lane = _Lane(drained, drained + 1, paused, self._clock())
            self._interim[index, partition] = lane
            self._replan = True
        return lane

    def parks(self, index: int, partition: int) -> bool:
        """Whether a new record of this destination and input partition is parked."""
        lane = self._lane(index, partition)
        return self._faults[index] is not None or lane.paused or lane.backlog > 0

    def holds(self, index: int) -> bool:
        """Whether any record of the destination is parked or would be (backfills wait)."""
        if self._planned is None or self._planned != self._generation():
            return True
        if index in self._unread or any(i == index for i, _ in self._interim):
            return True  # its log may hold records not read yet
        lanes = self._lanes[index].values()
        return self._faults[index] is not None or any(lane.paused or lane.backlog for lane in lanes)

    def failed(self, index: int, reason: str | None) -> None:
        """The destination's stream did not take records in time: it is parked."""
        now = self._clock()
        fault = self._faults[index]
        name = self._destinations[index].name
        if fault is None:
            log.error(
                "destination %s parked: its stream did not accept records (%s); its records "
                "go to %s until it does, the other destinations go on",
                name,
                reason,
                self._topics[index],
                extra={"destination": name},
            )
        probe_s = self._destinations[index].settings.park_probe_s
        since = now if fault is None else fault.since
        self._faults[index] = _Fault(reason or "not accepted", since, now + probe_s)
        self._report()

    async def park(self, index: int, records: Sequence[tuple[int, Parked]]) -> None:
        """Writes (input partition, record) pairs to the destination's lanes, in order."""
        by_partition: dict[int, list[Parked]] = {}
        lanes: dict[int, _Lane] = {}
        for partition, parked in records:
            if partition not in lanes:
                lanes[partition] = self._lane(index, partition)
            by_partition.setdefault(partition, []).append(parked)
        topic = self._topics[index]
        now = self._clock()
        # Every write settles before anything is raised: none may land after the
        # log's end is read again for the retry.
        written = await asyncio.gather(
            *(self._log.write(topic, p, chunk) for p, chunk in by_partition.items()),
            return_exceptions=True,
        )
        failure = next((w for w in written if isinstance(w, BaseException)), None)
        if failure is not None:
            # Kafka may hold some of them all the same (a reply lost): until the
            # log's end is read again, each lane counts as holding records, so
            # that nothing of it goes direct before they are sent.
            for lane in lanes.values():
                lane.end = max(lane.end, lane.drained + len(lane.sent) + 1)
                lane.oldest = lane.oldest or now
            self._replan = True
            raise failure
        for (partition, chunk), offsets in zip(by_partition.items(), written, strict=True):
            assert isinstance(offsets, list)
            lane = lanes[partition]
            if lane.backlog == 0:
                lane.oldest = now
            lane.end = max(lane.end, offsets[-1] + 1)
            if lane.drained > offsets[0]:
                # The log starts again below the stored cursor (a topic created
                # again): the cursor follows, stored with the batch's state, so
                # that no plan takes these records for sent.
                lane.drained = offsets[0]
                lane.sent.clear()
                self._tables.put_parking(self._destinations[index].name, lane.stored(), partition)
            metrics.PARKED.labels(destination=self._destinations[index].name).inc(len(chunk))
        self._report()

    def pause(self, index: int, partition: int, paused: bool) -> None:
        """A pause or resume command of this partition (taken with its batch)."""
        lane = self._lane(index, partition)
        if lane.paused == paused:
            return
        lane.paused = paused
        self._tables.put_parking(self._destinations[index].name, lane.stored(), partition)
        log.info(
            "destination %s %s in partition %d",
            self._destinations[index].name,
            "paused" if paused else "resumed",
            partition,
            extra={"destination": self._destinations[index].name, "partition": partition},
        )
        self._report()

    # -- status ----------------------------------------------------------------------

    def statuses(self) -> list[DestinationStatus]:
        now = self._clock()
        found = []
        for index, destination in enumerate(self._destinations):
            lanes = list(self._lanes[index].values())
            fault = self._faults[index]
            backlog = sum(lane.backlog for lane in lanes)
            oldest = [lane.oldest for lane in lanes if lane.backlog and lane.oldest is not None]
            reason: str | None
            if fault is not None:
                state, reason = DeliveryState.PARKED, fault.reason
            elif lanes and all(lane.paused for lane in lanes):
                state, reason = DeliveryState.PAUSED, "paused by a command"
            elif backlog or any(lane.paused for lane in lanes):
                paused = sum(1 for lane in lanes if lane.paused)
                state = DeliveryState.PAUSED if paused else DeliveryState.DRAINING
                reason = f"paused in {paused} partition(s)" if paused else None
            else:
                state, reason = DeliveryState.DIRECT, None
            age = max(0.0, now - min(oldest)) if oldest else 0.0
            found.append(DestinationStatus(destination.name, state, reason, backlog, age))
        return found

    def _report(self) -> None:
        self._reported_at = self._clock()
        for status in self.statuses():
            metrics.set_parking(status.name, status.state, status.parked, status.oldest_age_s)

    # -- between batches (worker.batching.Background) --------------------------------

    def due_in(self) -> float:
        """Seconds until a probe or a drain slice is due (0: now). Never raises:
        live batches must not stop on a parking bug."""
        try:
            return self._due_in()
        except Exception as exc:
            log_failure("parking (when due)", exc, IDLE_POLL_S)
            return IDLE_POLL_S

    def _due_in(self) -> float:
        now = self._clock()
        if now - self._reported_at >= REPORT_EVERY_S:
            self._report()  # the oldest parked record's age grows while nothing happens
        if now < self._retry_at:
            return min(IDLE_POLL_S, self._retry_at - now)
        assignment = self._assignment()
        if assignment is None:
            return IDLE_POLL_S
        if self._stale(assignment[0]):
            return 0.0
        waits = [IDLE_POLL_S]
        for index, fault in enumerate(self._faults):
            if fault is not None:
                waits.append(max(0.0, fault.probe_at - now))
            elif self._drainable(index):
                waits.append(0.0)
        return min(waits)

    def _drainable(self, index: int) -> list[int]:
        lanes = self._lanes[index]
        return sorted(p for p, lane in lanes.items() if lane.backlog and not lane.paused)

    async def prepare(self) -> None:
        """Before each batch: the lanes of a new assignment are read first. Never
        raises (a batch without them parks, see ``_lane``)."""
        try:
            if self._clock() < self._retry_at:
                return
            assignment = self._assignment()
        except Exception as exc:
            log_failure("parking (before a batch)", exc, IDLE_POLL_S)
            return
        if assignment is not None and self._stale(assignment[0]):
            await self.run()

    async def run(self) -> None:
        """Reads a new assignment's lanes; probes the parked destinations that are
        due, drains the draining ones. Failures are retried later; nothing is
        raised into the batch loop."""
        try:
            await self._run()
            if not self._replan:
                self._failures = 0
        except NotPlanned:
            self._replan = True  # a rebalance began: read again once it is over
        except Exception as exc:
            self._failures += 1
            delay = backoff_s(self._failures)
            self._retry_at = self._clock() + delay
            self._replan = True  # read again from the table and Kafka
            log_failure("parking", exc, delay)
        self._report()

    async def _run(self) -> None:
        assignment = self._assignment()
        if assignment is None:
            return
        if self._stale(assignment[0]):
            await self._plan(*assignment)
            if self._planned != assignment[0]:
                return  # a rebalance began meanwhile: these lanes may be another's
        for index in range(len(self._destinations)):
            if self._clock() < self._held_until[index]:
                continue
            try:
                await self._probe_or_drain(index)
            except NotPlanned:
                raise
            except Exception as exc:
                # This destination's parking log, not the others'.
                delay = backoff_s(self._failures + 1)
                self._held_until[index] = self._clock() + delay
                log_failure(f"parking of {self._destinations[index].name}", exc, delay)
        await self._tables.flush()
        emptied, self._emptied = self._emptied, []
        for index, partition, before in emptied:
            await self._trim(index, partition, before)

    async def _probe_or_drain(self, index: int) -> None:
        if index in self._unread:
            return  # its lanes are not read: nothing to send, no probe to judge by
        fault = self._faults[index]
        drainable = self._drainable(index)
        if fault is None:
            await self._drain(index)
            return
        now = self._clock()
        if now < fault.probe_at:
            return
        if not drainable:
            self._faults[index] = None  # nothing parked here to try it with
            return
        # One attempt with the oldest records: the probe is a real write.
        taken, _ = await self._slice(index, drainable[0], patience_s=0.0)
        if taken:
            self._recovered(index, now - fault.since)
        else:
            self.failed(index, self._destinations[index].writer.last_error)

    async def _drain(self, index: int) -> None:
        """Slices of each draining lane in turn, for up to DRAIN_BUDGET_S: a lane
        that gets more new records a batch than a slice holds still empties."""
        deadline = self._clock() + DRAIN_BUDGET_S
        while drainable := self._drainable(index):
            progressed = False
            for partition in drainable:
                taken, left = await self._slice(index, partition, DRAIN_PATIENCE_S)
                if left:
                    self.failed(index, self._destinations[index].writer.last_error)
                    return
                progressed |= taken > 0
                if self._clock() >= deadline:
                    return
            if not progressed:
                return

    async def _trim(self, index: int, partition: int, before: int) -> None:
        """Deletes a drained lane's records from Kafka (its disk, and the personal
        data in them); once the table says they were sent, so a failure here
        costs nothing but the space."""
        try:
            await self._log.trim(self._topics[index], partition, before)
        except Exception as exc:
            log.warning(
                "parked records of %s in partition %d not deleted (%s: %s); kept until the next",
                self._destinations[index].name,
                partition,
                type(exc).__name__,
                exc,
            )

    def _recovered(self, index: int, parked_s: float) -> None:
        self._faults[index] = None
        name = self._destinations[index].name
        backlog = sum(lane.backlog for lane in self._lanes[index].values())
        log.info(
            "destination %s accepts records again after %.0fs parked: draining %d parked record(s)",
            name,
            parked_s,
            backlog,
            extra={"destination": name},
        )

    def _stale(self, generation: int) -> bool:
        return generation != self._planned or (self._replan and self._clock() >= self._plan_at)

    async def _plan(self, generation: int, partitions: frozenset[int]) -> None:
        """Reads each destination's lanes: cursor and pause from the table, end
        from the log. A destination whose log cannot be read keeps no lanes (its
        records are parked in interim lanes, see ``_lane``) and is read again
        after a backoff; the others are planned."""
        lanes: list[dict[int, _Lane]] = []
        unread: list[tuple[int, str, Exception]] = []
        for index, destination in enumerate(self._destinations):
            try:
                mine = await self._read_lanes(index, partitions)
            except Exception as failure:
                unread.append((index, destination.name, failure))
                mine = {}
            lanes.append(mine)
        if generation != self._generation():
            return  # a rebalance began while reading: read again
        self._lanes = lanes
        self._interim.clear()
        self._planned = generation
        self._replan = bool(unread)
        self._unread = {index for index, _, _ in unread}
        if unread:
            self._plan_failures += 1
            delay = backoff_s(self._plan_failures)
            self._plan_at = self._clock() + delay  # the others drain meanwhile
            for _, name, problem in unread:
                log_failure(f"reading the parking lanes of {name}", problem, delay)
        else:
            self._plan_failures = 0

    async def _read_lanes(self, index: int, partitions: frozenset[int]) -> dict[int, _Lane]:
        destination = self._destinations[index]
        ends = await self._log.end_offsets(self._topics[index], partitions)
        mine: dict[int, _Lane] = {}
        for partition in sorted(partitions):
            stored = self._tables.get_parking(destination.name, partition) or {}
            end = ends.get(partition, 0)
            # A parking topic created again starts at 0: what the table says
            # past its end was sent from the old one.
            drained = min(int(stored.get("drained", 0)), end)
            lane = _Lane(drained, end, bool(stored.get("paused", False)))
            if drained < int(stored.get("drained", 0)):
                self._tables.put_parking(destination.name, lane.stored(), partition)
            if lane.backlog:
                first = await self._log.read(self._topics[index], partition, drained, 1)
                lane.oldest = first[0].timestamp if first else self._clock()
            mine[partition] = lane
        parked = sum(lane.backlog for lane in mine.values())
        if parked:
            log.info(
                "destination %s: %d parked record(s) in %d owned partition(s) to send",
                destination.name,
                parked,
                sum(1 for lane in mine.values() if lane.backlog),
                extra={"destination": destination.name},
            )
        return mine

    def _owned(self, partition: int) -> bool:
        assignment = self._assignment()
        return (
            assignment is not None
            and assignment[0] == self._planned
            and partition in assignment[1]
            and self._generation() == self._planned
        )

    async def _slice(self, index: int, partition: int, patience_s: float) -> tuple[int, bool]:
        """Sends the lane's next parked records: how many the stream took (or
        refused for good: dead-lettered), and whether it left some (not taken
        in time: the caller parks the destination again)."""
        destination = self._destinations[index]
        lane = self._lanes[index][partition]
        fetched = await self._log.read(self._topics[index], partition, lane.drained, SLICE + 1)
        if not fetched:
            # Nothing there: the log ends earlier than thought (a topic created again).
            ends = await self._log.end_offsets(self._topics[index], [partition])
            lane.end = ends.get(partition, lane.drained)
            lane.drained = min(lane.drained, lane.end)
            lane.sent.clear()
            return 0, False
        lane.end = max(lane.end, fetched[-1].offset + 1)
        todo = [p for p in fetched[:SLICE] if p.offset not in lane.sent]
        outcomes = await destination.writer.put_all([p.record for p in todo], patience_s)
        if not self._owned(partition):
            raise NotPlanned(f"partition {partition} moved away: its new owner sends the rest")
        accepted: Counter[ExportStatus] = Counter()
        deferred = False
        for parked, outcome in zip(todo, outcomes, strict=True):
            if outcome.deferred:
                deferred = True
                continue
            if outcome.accepted:
                accepted[parked.status] += 1
            else:
                letter = rejected_letter(
                    parked.key, parked.source, parked.record, outcome, destination
                )
                await self._dead_letters.send(letter.key, letter.value)
                metrics.DEAD_LETTERS.labels(reason=letter.reason).inc()
            lane.sent.add(parked.offset)
        for status, count in accepted.items():
            metrics.EXPORTS.labels(destination=destination.name, status=status).inc(count)
            metrics.DRAINED.labels(destination=destination.name).inc(count)
        # The lane's cursor moves over what was sent from its start on; what was
        # sent past a record not taken is remembered (``sent``), not sent again.
        first_left = next((p for p in fetched if p.offset not in lane.sent), None)
        lane.drained = fetched[-1].offset + 1 if first_left is None else first_left.offset
        lane.sent = {offset for offset in lane.sent if offset >= lane.drained}
        if first_left is not None:
            lane.oldest = first_left.timestamp
        self._tables.put_parking(destination.name, lane.stored(), partition)
        if not lane.backlog:
            lane.oldest = None
            self._emptied.append((index, partition, lane.drained))
            log.info(
                "destination %s: partition %d drained, direct again",
                destination.name,
                partition,
                extra={"destination": destination.name, "partition": partition},
            )
        return len(todo) - sum(1 for o in outcomes if o.deferred), deferred
