"""Sending current members: backfill of newly mapped segments, re-send on request.

``Activations`` keeps, per (destination, input partition) this worker owns,
what the destination has activated (worker.activation), planned against the
configuration the first time the partition is seen after each rebalance: a
segment mapped since gets a backfill job. ``Backfiller`` runs the jobs a
slice at a time, between two batches of the same loop that processes live
events (worker.batching), so a profile's backfill record and its live records
reach the stream in the order of its state: the slice reads the tables after
the last batch wrote them, and the next batch starts after the slice's records
were accepted.

A slice sends members in the order of their profile ids, then stores the last
id sent as the job's cursor, in the same table write as any other state (and
before the next batch is acknowledged): a crash resends at most the slice in
flight. Slices are paced to ``backfill_share`` of the stream's records/s limit
(per shard, times the shards) so that live records keep their room.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from worker import deadletters, metrics
from worker.activation import (
    Activation,
    Job,
    activation_from_json,
    activation_to_json,
    plan,
    request,
)
from worker.batching import is_outage
from worker.deadletters import DeadLetter
from worker.export import encode
from worker.kinesis import Outcome, Record, Rejection
from worker.membership import memberships_from_json
from worker.pipeline import DeadLetterSink, Destination
from worker.vocabulary import DeadLetterReason as Reason
from worker.vocabulary import JobKind

log = logging.getLogger(__name__)

# Records per slice at most: a slice holds the loop, and live batches wait for it.
SLICE_MAX = 500
# A slice aims at this much of the pace's time, so it stays short.
SLICE_SECONDS = 0.2
PROGRESS_INTERVAL_S = 10.0
BACKOFF_MAX_S = 30.0


class ActivationTables(Protocol):
    """The tables as backfill reads and writes them, by partition."""

    def member_ids(self, partition: int) -> list[str]: ...

    def get_profile(self, profile_id: str, scope: Any) -> dict[str, Any] | None: ...

    def get_memberships(self, profile_id: str, scope: Any) -> dict[str, Any] | None: ...

    def get_activation(self, destination: str, partition: int) -> dict[str, Any] | None: ...

    def put_activation(
        self, destination: str, value: dict[str, Any] | None, partition: int
    ) -> None: ...

    def scope(self, partition: int) -> Any: ...

    async def flush(self) -> None: ...


# (generation, input partitions owned) when tables are recovered and no
# rebalance is under way; None otherwise.
Assignment = Callable[[], tuple[int, frozenset[int]] | None]


class Activations:
    """The activation of each (destination, partition), loaded and planned lazily."""

    def __init__(
        self,
        destinations: Sequence[Destination],
        tables: ActivationTables,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._destinations = list(destinations)
        self._tables = tables
        self._clock = clock
        self._held: dict[tuple[int, int], Activation] = {}

    def forget(self) -> None:
        """After a rebalance: what another worker may have changed is read again."""
        self._held.clear()

    def get(self, destination: int, partition: int) -> Activation:
        key = (destination, partition)
        held = self._held.get(key)
        if held is not None:
            return held
        dest = self._destinations[destination]
        stored = self._tables.get_activation(dest.name, partition)
        current = None
        if stored is not None:
            try:
                current = activation_from_json(stored)
            except ValueError as exc:
                # Only this worker writes it; replanning loses at most a pending job.
                log.error("activation of %s in partition %d: %s", dest.name, partition, exc)
        planned = plan(
            current, dest.format.segment_ids, self._clock(), backfill=dest.settings.backfill
        )
        if planned is not None:
            self._log_plan(dest.name, partition, current, planned)
            self.put(destination, partition, planned)
            return planned
        assert current is not None  # plan() returns one when there is none
        self._held[key] = current
        return current

    def put(self, destination: int, partition: int, activation: Activation) -> None:
        """Holds ``activation`` and writes it (durable with the tables' next flush)."""
        self._held[destination, partition] = activation
        self._tables.put_activation(
            self._destinations[destination].name, activation_to_json(activation), partition
        )

    def request(
        self, destination: int, partition: int, job_id: str, segments: frozenset[str]
    ) -> None:
        """A re-send (worker.control), queued after the partition's pending jobs."""
        updated = request(self.get(destination, partition), job_id, segments, self._clock())
        if updated is not None:
            log.info(
                "re-send %s of %s taken in partition %d",
                job_id,
                self._destinations[destination].name,
                partition,
            )
            self.put(destination, partition, updated)

    @staticmethod
    def _log_plan(
        name: str, partition: int, current: Activation | None, planned: Activation
    ) -> None:
        before = frozenset() if current is None else current.active
        added, removed = planned.active - before, before - planned.active
        if current is None:
            what = "new destination"
        else:
            what = f"mapped {sorted(added)}" if added else ""
            what += f"{'; ' if what else ''}unmapped {sorted(removed)}" if removed else ""
        jobs_before = 0 if current is None else len(current.jobs)
        job = "a backfill" if len(planned.jobs) > jobs_before else "nothing"
        log.info("%s, partition %d: %s; %s to send", name, partition, what, job)


@dataclass(slots=True)
class _Pass:
    """One job's members left to send in one partition, in profile id order."""

    job_id: str
    left: list[str]  # reversed: the next id to send is last
    total: int


@dataclass(slots=True)
class _Pace:
    """The slices' token bucket for one destination, in records."""

    tokens: float = 0.0
    at: float = 0.0


@dataclass(slots=True)
class _Progress:
    sent: int = 0
    at: float = 0.0
    reported: dict[tuple[int, JobKind], int] = field(default_factory=dict)


class Backfiller:
    """Runs the activations' jobs a paced slice at a time, between batches."""

    def __init__(
        self,
        destinations: Sequence[Destination],
        activations: Activations,
        tables: ActivationTables,
        dead_letters: DeadLetterSink,
        assignment: Assignment,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._destinations = list(destinations)
        self._activations = activations
        self._tables = tables
        self._dead_letters = dead_letters
        self._assignment = assignment
        self._clock = clock
        self._generation: int | None = None
        self._partitions: frozenset[int] = frozenset()
        # (destination, partition, job id): the members each job has left to send
        self._passes: dict[tuple[int, int, str], _Pass] = {}
        self._paces = [_Pace() for _ in self._destinations]
        self._retry_at = 0.0
        self._failures = 0
        self._progress = _Progress()

    # -- when ------------------------------------------------------------------------

    def due_in(self) -> float:
        """Seconds until a slice is due: 0 now; at most 1, to see rebalances while idle."""
        try:
            return self._due_in()
        except Exception as exc:  # never stop live events for a backfill
            log.error("backfill: %s: %s", type(exc).__name__, exc)
            self._retry_at = self._clock() + BACKOFF_MAX_S
            return 1.0

    def _due_in(self) -> float:
        now = self._clock()
        if now < self._retry_at:
            return min(1.0, self._retry_at - now)
        assignment = self._assignment()
        if assignment is None:
            return 1.0
        if assignment[0] != self._generation:
            return 0.0
        waits = [
            self._wait(index, now)
            for index in range(len(self._destinations))
            if self._has_work(index)
        ]
        return min([1.0, *waits])

    def _has_work(self, index: int) -> bool:
        return any(self._activations.get(index, p).jobs for p in self._partitions)

    def _rate(self, index: int) -> float | None:
        """Records/s this destination's slices may send; None: no limit."""
        destination = self._destinations[index]
        limit = destination.settings.shard_records_per_s
        if not limit:
            return None
        shards = destination.writer.shard_count or 1
        return destination.settings.backfill_share * limit * shards

    def _slice_size(self, index: int) -> int:
        rate = self._rate(index)
        if rate is None:
            return SLICE_MAX
        return max(1, min(SLICE_MAX, int(rate * SLICE_SECONDS)))

    def _refill(self, index: int, now: float) -> float:
        pace, rate = self._paces[index], self._rate(index)
        if rate is None:
            pace.tokens = float(SLICE_MAX)
        else:
            if pace.at == 0.0:
                pace.at = now
            pace.tokens = min(self._slice_size(index), pace.tokens + (now - pace.at) * rate)
        pace.at = now
        return pace.tokens

    def _wait(self, index: int, now: float) -> float:
        tokens = self._refill(index, now)
        rate = self._rate(index)
        needed = self._slice_size(index)
        if tokens >= needed or rate is None:
            return 0.0
        return (needed - tokens) / rate

    # -- a slice ---------------------------------------------------------------------

    async def run(self) -> None:
        """Plans newly owned partitions, then sends one slice per destination that
        is due. Failures are logged and retried later: the jobs' cursors only
        move once what they cover was accepted."""
        try:
            await self._run()
            self._failures = 0
        except Exception as exc:
            self._failures += 1
            delay = min(BACKOFF_MAX_S, 0.5 * 2 ** min(self._failures, 6))
            self._retry_at = self._clock() + delay
            self._passes.clear()  # rebuilt from the stored cursors
            self._activations.forget()
            if is_outage(exc):
                log.warning(
                    "backfill slice failed (%s: %s); retry in %.1fs", type(exc).__name__, exc, delay
                )
            else:
                log.error(
                    "backfill slice failed (%s); retry in %.1fs",
                    type(exc).__name__,
                    delay,
                    extra={"traceback": "".join(traceback.format_tb(exc.__traceback__))},
                )

    async def prepare(self) -> None:
        """Before each batch: a new assignment is planned before any of its events
        is applied, so that a backfill sends the members as of its mapping (a
        profile joining later gets its live record, not a backfill one too)."""
        assignment = self._assignment()
        if assignment is not None and assignment[0] != self._generation:
            await self.run()

    async def _run(self) -> None:
        assignment = self._assignment()
        if assignment is None:
            return
        if assignment[0] != self._generation:
            await self._plan(*assignment)
        now = self._clock()
        for index in range(len(self._destinations)):
            if self._has_work(index) and self._wait(index, now) == 0.0:
                await self._slice(index, now)
        self._report(now)

    async def _plan(self, generation: int, partitions: frozenset[int]) -> None:
        """Plans each owned partition and lists the members of each of its jobs:
        a backfill sends the members of the moment its mapping is seen, even when
        it is queued behind another job."""
        self._activations.forget()
        self._passes.clear()
        self._generation, self._partitions = generation, partitions
        for index in range(len(self._destinations)):
            for partition in sorted(partitions):
                for job in self._activations.get(index, partition).jobs:
                    self._pass(index, partition, job)
                self._next_job(index, partition)
        await self._tables.flush()

    async def _slice(self, index: int, now: float) -> None:
        destination = self._destinations[index]
        budget = self._slice_size(index)
        if self._rate(index) is not None:
            budget = max(1, min(budget, int(self._paces[index].tokens)))
        used = 0
        taken: list[tuple[int, Job, str]] = []  # partition, job, last id taken
        records: list[tuple[Record, bytes, int, Job]] = []
        letters: list[DeadLetter] = []
        for partition in sorted(self._partitions):
            if used >= budget:
                break
            job = self._next_job(index, partition)
            if job is None:
                continue
            work = self._pass(index, partition, job)
            scope = self._tables.scope(partition)
            last = ""
            while work.left and used < budget:
                last = work.left.pop()
                used += 1
                try:
                    record = self._record(destination, job, last, scope)
                except Exception as exc:  # a stored state this code cannot read
                    letters.append(_letter(last, job, partition, destination, exc))
                    continue
                if record is not None:
                    records.append((record, last.encode(), partition, job))
            taken.append((partition, job, last))
        accepted: Counter[int] = Counter()  # by partition
        if records:
            outcomes = await destination.writer.put_all([r for r, *_ in records])
            for (record, key, partition, job), outcome in zip(records, outcomes, strict=True):
                if outcome.accepted:
                    accepted[partition] += 1
                else:
                    letters.append(_rejected(record, key, job, partition, destination, outcome))
        for letter in letters:
            await self._dead_letters.send(letter.key, letter.value)
            metrics.DEAD_LETTERS.labels(reason=letter.reason).inc()
        # Only now that every record is accepted or dead-lettered do the cursors move.
        for partition, job, last in taken:
            activation = self._activations.get(index, partition)
            work = self._passes[index, partition, job.id]
            count = accepted[partition]
            moved = replace(job, cursor=last, sent=job.sent + count, total=work.total)
            if work.left:
                self._activations.put(index, partition, activation.with_job(moved))
            else:
                self._finish(index, partition, activation, moved)
            labels = {"destination": destination.name}
            metrics.ACTIVATION_SENT.labels(**labels, kind=job.kind).inc(count)
            metrics.EXPORTS.labels(**labels, status=job.kind).inc(count)
        self._paces[index].tokens -= used
        await self._tables.flush()

    def _next_job(self, index: int, partition: int) -> Job | None:
        """The partition's first job with members left; those with none are finished."""
        activation = self._activations.get(index, partition)
        while activation.jobs:
            job = activation.jobs[0]
            work = self._pass(index, partition, job)
            if work.left:
                return job
            activation = self._finish(index, partition, activation, replace(job, total=work.total))
        return None

    def _finish(self, index: int, partition: int, activation: Activation, job: Job) -> Activation:
        finished = activation.finish(job)
        self._activations.put(index, partition, finished)
        self._passes.pop((index, partition, job.id), None)
        log.info(
            "%s %s to %s done in partition %d: %d records",
            job.kind.value,
            job.id,
            self._destinations[index].name,
            partition,
            job.sent,
        )
        return finished

    def _pass(self, index: int, partition: int, job: Job) -> _Pass:
        """The members of ``job``'s segments after its cursor, scanned once."""
        work = self._passes.get((index, partition, job.id))
        if work is not None:
            return work
        scope = self._tables.scope(partition)
        members = []
        for profile_id in self._tables.member_ids(partition):
            if job.cursor is not None and profile_id <= job.cursor:
                continue
            stored = self._tables.get_memberships(profile_id, scope)
            if not stored:
                continue
            try:
                held = memberships_from_json(stored)
            except ValueError:
                members.append(profile_id)  # the slice dead-letters it, with the reason
                continue
            if any(held[s].member for s in job.segments if s in held):
                members.append(profile_id)
        members.sort(reverse=True)
        work = _Pass(job.id, members, job.sent + len(members))
        self._passes[index, partition, job.id] = work
        return work

    def _record(
        self, destination: Destination, job: Job, profile_id: str, scope: Any
    ) -> Record | None:
        """The record of ``profile_id`` as it is now, or None when it left the job's segments."""
        stored = self._tables.get_memberships(profile_id, scope)
        memberships = memberships_from_json(stored) if stored else {}
        if not any(memberships[s].member for s in job.segments if s in memberships):
            return None
        profile = self._tables.get_profile(profile_id, scope) or {}
        identities = profile.get("identityMap") or profile.get("rememberedIdentityMap")
        attributes = profile.get("attributes") or {}
        built = destination.format.build(attributes, identities, memberships, {})
        if built is None:
            return None
        return Record(encode(built), destination.format.partition_key(identities, profile_id))

    # -- progress --------------------------------------------------------------------

    def progress(self) -> dict[tuple[int, JobKind], tuple[int, int, int]]:
        """(jobs, members done, members in total) per destination and kind, over the
        partitions this worker owns. A member is done once sent, dead-lettered or
        skipped (it left the segments); a job not yet listed counts what it sent."""
        found: dict[tuple[int, JobKind], tuple[int, int, int]] = {}
        for index in range(len(self._destinations)):
            for partition in self._partitions:
                for job in self._activations.get(index, partition).jobs:
                    work = self._passes.get((index, partition, job.id))
                    if work is None:
                        done, total = job.sent, job.total or job.sent
                    else:
                        done, total = work.total - len(work.left), work.total
                    jobs, done_before, total_before = found.get((index, job.kind), (0, 0, 0))
                    found[index, job.kind] = (jobs + 1, done_before + done, total_before + total)
        return found

    def _report(self, now: float) -> None:
        progress = self.progress()
        for index, destination in enumerate(self._destinations):
            for kind in JobKind:
                jobs, sent, total = progress.get((index, kind), (0, 0, 0))
                labels = {"destination": destination.name, "kind": kind}
                metrics.ACTIVATION_JOBS.labels(**labels).set(jobs)
                metrics.ACTIVATION_REMAINING.labels(**labels).set(total - sent)
        state = self._progress
        if now - state.at < PROGRESS_INTERVAL_S:
            return
        elapsed = now - state.at if state.at else 0.0
        for (index, kind), (jobs, sent, total) in sorted(progress.items()):
            before = state.reported.get((index, kind))
            rate = (
                max(0.0, (sent - before) / elapsed) if before is not None and elapsed > 0 else 0.0
            )
            left = total - sent
            eta = f"about {left / rate:.0f}s left" if rate > 0 else "time left unknown yet"
            log.info(
                "%s to %s: %d/%d members (%d%%), %.0f/s, %s, %d job(s) in this worker's partitions",
                kind.value,
                self._destinations[index].name,
                sent,
                total,
                100 * sent // total if total else 0,
                rate,
                eta,
                jobs,
            )
        state.reported = {key: sent for key, (_, sent, _) in progress.items()}
        state.at = now


def _letter(
    profile_id: str, job: Job, partition: int, destination: Destination, exc: Exception
) -> DeadLetter:
    log.error(
        "%s of %s: profile in partition %d not sent (%s)",
        job.kind.value,
        destination.name,
        partition,
        type(exc).__name__,
        extra={"traceback": "".join(traceback.format_tb(exc.__traceback__))},
    )
    return deadletters.build(
        profile_id.encode(),
        Reason.INTERNAL_ERROR,
        f"{type(exc).__name__}: {exc}",
        None,
        {"job": job.id, "kind": job.kind.value, "partition": partition},
        destination=destination.name,
        stream=destination.settings.stream,
    )


def _rejected(
    record: Record, key: bytes, job: Job, partition: int, destination: Destination, outcome: Outcome
) -> DeadLetter:
    return deadletters.build(
        key,
        Reason(outcome.reason or Rejection.REJECTED_BY_KINESIS),
        outcome.detail,
        record.data,
        {"job": job.id, "kind": job.kind.value, "partition": partition},
        destination=destination.name,
        stream=destination.settings.stream,
        partitionKey=record.partition_key,
    )


__all__ = ["ActivationTables", "Activations", "Assignment", "Backfiller"]
