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
flight. A slice whose partition moved to another worker meanwhile stores
nothing; the new owner resends at most that slice. Slices are paced to
``backfill_share`` of the stream's records/s limit, split between the workers
by the share of the partitions each owns, so that live records keep their room.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
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
from worker.batching import backoff_s, log_failure
from worker.budget import MemoryBudget
from worker.deadletters import DeadLetter
from worker.errors import RetryLater
from worker.export import encode
from worker.kinesis import Record
from worker.membership import memberships_from_json
from worker.pipeline import DeadLetterSink, Destination, rejected_letter, stored_identities
from worker.vocabulary import DeadLetterReason as Reason
from worker.vocabulary import JobKind

log = logging.getLogger(__name__)

# Records per slice at most: a slice holds the loop, and live batches wait for it.
SLICE_MAX = 500
# A slice aims at this much of the pace's time, so it stays short.
SLICE_SECONDS = 0.2
# Members listed between two turns of the event loop while a job is listed.
LIST_CHUNK = 2000
PROGRESS_INTERVAL_S = 10.0
# Polled this often while idle, to see a new assignment.
IDLE_POLL_S = 1.0
# The table key (empty destination) that marks a partition as planned.
PLANNED = ""


class ActivationTables(Protocol):
    """The tables as backfill reads and writes them, by partition."""

    def stored_memberships(
        self, partitions: Collection[int]
    ) -> dict[int, list[tuple[str, dict[str, Any]]]]:
        """(profile id, stored memberships) of every profile in each partition."""

    def get_profile(self, profile_id: str, scope: Any) -> dict[str, Any] | None: ...

    def get_memberships(self, profile_id: str, scope: Any) -> dict[str, Any] | None: ...

    def get_activation(self, destination: str, partition: int) -> dict[str, Any] | None: ...

    def put_activation(
        self, destination: str, value: dict[str, Any] | None, partition: int
    ) -> None: ...

    def scope(self, partition: int) -> Any: ...

    async def flush(self) -> None: ...


# (rebalance count, input partitions owned) when tables are recovered and no
# rebalance is under way; None otherwise (worker.faust.state.owned_partitions).
Assignment = Callable[[], tuple[int, frozenset[int]] | None]


def new_backfill_id() -> str:
    return f"backfill-{uuid.uuid4().hex[:12]}"


class Holds(Protocol):
    """What the backfill asks of worker.parking."""

    def holds(self, destination: int) -> bool: ...

    def failed(self, destination: int, reason: str | None) -> None: ...


# How long a slice waits for a stream that does not take it before the
# destination is parked (worker.parking): live batches wait behind it.
DRAIN_PATIENCE_S = 2.0


class Deferred(RetryLater):
    """A slice's stream did not take it in time: the destination is parked."""


class NotPlanned(RetryLater):
    """The activations were planned for another assignment than the current one
    (a rebalance began since): a command waits until they are planned again."""


class Activations:
    """The activation of each (destination, partition) of the current assignment.

    Read and written only for the assignment the backfiller planned (``begin``,
    with Faust's rebalance count): after a rebalance another worker may own a
    partition, or have changed it, so nothing is read or written until the new
    assignment is planned (``NotPlanned``).
    """

    def __init__(
        self,
        destinations: Sequence[Destination],
        tables: ActivationTables,
        generation: Callable[[], int],
        clock: Callable[[], float] = time.time,
        rebalancing: Callable[[], bool] = lambda: False,
    ) -> None:
        """``rebalancing``: whether a rebalance (or the recovery after it) is
        under way, when the batch in flight was taken under the plan held."""
        self._destinations = list(destinations)
        self._tables = tables
        self._generation = generation
        self._rebalancing = rebalancing
        self._clock = clock
        self._held: dict[tuple[int, int], Activation] = {}
        self._planned: int | None = None
        self._partitions: frozenset[int] = frozenset()

    def begin(self, generation: int, partitions: frozenset[int]) -> None:
        """A new assignment: what is held is read again from the tables."""
        self._held.clear()
        self._planned, self._partitions = generation, partitions

    def current(self) -> bool:
        return self._planned is not None and self._generation() == self._planned

    def get(self, destination: int, partition: int, *, batch: bool = False) -> Activation:
        """The activation as planned, for the current assignment. For a batch
        (``batch``) while a rebalance is under way, the one it was taken under:
        Faust waits for that batch before it hands the partitions over, so
        waiting for the new assignment instead would hold the rebalance forever."""
        usable = self._planned is not None and (self.current() or (batch and self._rebalancing()))
        if not usable or partition not in self._partitions:
            raise NotPlanned(f"partition {partition} is not planned for this assignment")
        key = (destination, partition)
        held = self._held.get(key)
        if held is not None:
            return held
        if self._tables.get_activation(PLANNED, partition) is None:
            self._adopt(partition)
            return self._held[key]
        dest = self._destinations[destination]
        current = self._stored(dest.name, partition)
        planned = plan(current, dest.format.segment_ids, self._clock(), new_backfill_id())
        if planned is not None:
            self._log_plan(dest.name, partition, current, planned)
            self.put(destination, partition, planned)
            return planned
        assert current is not None  # plan() returns one when there is none
        self._held[key] = current
        return current

    def _adopt(self, partition: int) -> None:
        """A partition no version that tracks activations planned (an upgrade, a
        new app_id): every destination takes its mapping as it is, with nothing
        to send (what the tables hold was exported already). All of them are
        written in one go, the marker last: a crash before the marker is durable
        adopts again, and a destination is never taken for new because another
        one was read first."""
        now = self._clock()
        for index, dest in enumerate(self._destinations):
            current = self._stored(dest.name, partition)
            adopted = plan(current, dest.format.segment_ids, now, new_backfill_id(), adopt=True)
            if adopted is None:
                assert current is not None
                self._held[index, partition] = current
            else:
                if current is None:
                    log.info(
                        "%s, partition %d: mapping adopted; nothing to send", dest.name, partition
                    )
                else:
                    self._log_plan(dest.name, partition, current, adopted)
                self.put(index, partition, adopted)
        self._tables.put_activation(PLANNED, {"since": now}, partition)

    def _stored(self, name: str, partition: int) -> Activation | None:
        stored = self._tables.get_activation(name, partition)
        if stored is None:
            return None
        try:
            return activation_from_json(stored)
        except ValueError as exc:
            # Planned as never seen: its members are sent again, duplicates, no loss.
            log.error("activation of %s in partition %d: %s", name, partition, exc)
            return None

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
        activation = self.get(destination, partition, batch=True)
        updated = request(activation, job_id, segments, self._clock())
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

    left: list[str]  # reversed: the next id to send is last
    total: int


@dataclass(slots=True)
class _Pace:
    """The slices' token bucket for one destination, in records."""

    tokens: float = 0.0
    at: float = 0.0


class Backfiller:
    """Runs the activations' jobs a paced slice at a time, between batches."""

    def __init__(
        self,
        destinations: Sequence[Destination],
        activations: Activations,
        tables: ActivationTables,
        dead_letters: DeadLetterSink,
        assignment: Assignment,
        partitions: int,
        memory: MemoryBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
        parking: Holds | None = None,
    ) -> None:
        """``partitions``: the input topics' partition count (the pace's split);
        ``parking``: a destination it holds (parked, paused or draining) gets no
        slice, so that no current-member record overtakes a parked one."""
        self._parking = parking
        self._destinations = list(destinations)
        self._activations = activations
        self._tables = tables
        self._dead_letters = dead_letters
        self._assignment = assignment
        self._partition_count = partitions
        self._memory = memory or MemoryBudget(64 * 1024 * 1024)
        self._clock = clock
        self._generation: int | None = None
        self._partitions: frozenset[int] = frozenset()
        # (destination, partition, job id): the members each job has left to send
        self._passes: dict[tuple[int, int, str], _Pass] = {}
        self._paces = [_Pace() for _ in self._destinations]
        self._retry_at = 0.0
        self._failures = 0
        # Members of the jobs finished since the last plan, by (destination, kind).
        self._finished: Counter[tuple[int, JobKind]] = Counter()
        self._reported: dict[tuple[int, JobKind], int] = {}
        self._reported_at = 0.0

    # -- when ------------------------------------------------------------------------

    def due_in(self) -> float:
        """Seconds until a slice is due (0: now); polls while idle, to see a new
        assignment. Never raises: live events must not wait on a backfill bug."""
        try:
            return self._due_in()
        except Exception as exc:
            self._failed(exc)
            return IDLE_POLL_S

    def _due_in(self) -> float:
        now = self._clock()
        if now < self._retry_at:
            return min(IDLE_POLL_S, self._retry_at - now)
        assignment = self._assignment()
        if assignment is None:
            return IDLE_POLL_S
        if assignment[0] != self._generation or not self._activations.current():
            return 0.0
        try:
            waits = [
                self._wait(index, now)
                for index in range(len(self._destinations))
                if self._has_work(index)
            ]
        except NotPlanned:
            return 0.0
        return min([IDLE_POLL_S, *waits])

    def _has_work(self, index: int) -> bool:
        if self._parking is not None and self._parking.holds(index):
            return False
        return any(self._activations.get(index, p).jobs for p in self._partitions)

    def _rate(self, index: int) -> float | None:
        """Records/s this worker's slices may send to this destination; None: no limit."""
        destination = self._destinations[index]
        limit = destination.settings.shard_records_per_s
        if not limit:
            return None
        shards = destination.writer.shard_count or 1
        owned = len(self._partitions) / max(1, self._partition_count)
        return max(1.0, destination.settings.backfill_share * limit * shards * owned)

    def _slice_size(self, index: int) -> int:
        rate = self._rate(index)
        if rate is None:
            return SLICE_MAX
        return max(1, min(SLICE_MAX, int(rate * SLICE_SECONDS)))

    def _wait(self, index: int, now: float) -> float:
        pace, rate = self._paces[index], self._rate(index)
        if rate is None:
            return 0.0
        if pace.at == 0.0:
            pace.at = now
        needed = self._slice_size(index)
        pace.tokens = min(needed, pace.tokens + (now - pace.at) * rate)
        pace.at = now
        return 0.0 if pace.tokens >= needed else (needed - pace.tokens) / rate

    # -- running ---------------------------------------------------------------------

    async def prepare(self) -> None:
        """Before each batch: a new assignment is planned before any of its events
        is applied, so that a backfill sends the members as of its mapping (a
        profile joining later gets its live record, not a backfill one too)."""
        if self._clock() < self._retry_at:
            return  # after a failure: planned again once its backoff is over
        try:
            assignment = self._assignment()
        except Exception as exc:
            self._failed(exc)
            return
        if assignment is not None and assignment[0] != self._generation:
            await self.run()

    async def run(self) -> None:
        """Plans a new assignment, then sends one slice per destination that is
        due. Failures are logged and retried later: the jobs' cursors only move
        once what they cover was accepted."""
        try:
            await self._run()
            self._failures = 0
        except NotPlanned:
            self._generation = None  # a rebalance began meanwhile: planned again
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        delay = backoff_s(self._failures)
        self._retry_at = self._clock() + delay
        self._generation = None  # planned again from the stored state
        log_failure("backfill slice", exc, delay)

    async def _run(self) -> None:
        assignment = self._assignment()
        if assignment is None:
            return
        if assignment[0] != self._generation:
            await self._plan(*assignment)
        now = self._clock()
        for index in range(len(self._destinations)):
            # Each get() below raises NotPlanned once a rebalance began.
            for partition in sorted(self._partitions):
                if self._activations.get(index, partition).jobs:
                    await self._next_job(index, partition)  # a request taken since: listed
            if self._has_work(index) and self._wait(index, now) == 0.0:
                await self._slice(index)
        await self._tables.flush()  # jobs finished while listed
        self._report(now)

    def _still_owned(self, partition: int) -> bool:
        assignment = self._assignment()
        return (
            assignment is not None
            and assignment[0] == self._generation
            and partition in assignment[1]
            and self._activations.current()
        )

    async def _plan(self, generation: int, partitions: frozenset[int]) -> None:
        """Plans each owned partition and lists the members of each of its jobs:
        a backfill sends the members of the moment its mapping is seen, even when
        it is queued behind another job."""
        self._generation = None
        self._activations.begin(generation, partitions)
        self._passes.clear()
        self._finished.clear()
        self._reported = {}
        self._partitions = partitions
        pending = {
            partition
            for index in range(len(self._destinations))
            for partition in partitions
            if self._activations.get(index, partition).jobs
        }
        await self._tables.flush()
        # Each get() below raises NotPlanned if a rebalance began during a listing.
        stored = self._tables.stored_memberships(pending) if pending else {}
        for index in range(len(self._destinations)):
            for partition in sorted(pending):
                for job in self._activations.get(index, partition).jobs:
                    await self._pass(index, partition, job, stored[partition])
                await self._next_job(index, partition)
        await self._tables.flush()
        self._generation = generation

    async def _slice(self, index: int) -> None:
        destination = self._destinations[index]
        budget = self._slice_size(index)
        if self._rate(index) is not None:
            budget = max(1, min(budget, int(self._paces[index].tokens)))
        used = 0
        taken: list[tuple[int, Job, str]] = []  # partition, job, last id taken
        records: list[tuple[Record, bytes, int, Job]] = []
        letters: list[DeadLetter] = []
        held = 0
        try:
            for partition in sorted(self._partitions):
                if used >= budget or self._memory.over:
                    break
                job = await self._next_job(index, partition)
                if job is None:
                    continue
                work = self._passes[index, partition, job.id]
                scope = self._tables.scope(partition)
                last = ""
                while work.left and used < budget and not self._memory.over:
                    last = work.left.pop()
                    used += 1
                    try:
                        record = self._record(destination, job, last, scope)
                    except Exception as exc:  # a stored state this code cannot read
                        letters.append(_letter(last, job, partition, destination, exc))
                        continue
                    if record is not None:
                        records.append((record, last.encode(), partition, job))
                        self._memory.take_output(len(record.data))
                        held += len(record.data)
                taken.append((partition, job, last))
            accepted: Counter[int] = Counter()  # by partition
            if records:
                patience = None if self._parking is None else DRAIN_PATIENCE_S
                outcomes = await destination.writer.put_all([r for r, *_ in records], patience)
                if any(outcome.deferred for outcome in outcomes):
                    assert self._parking is not None
                    self._parking.failed(index, destination.writer.last_error)
                    # Planned again from the stored cursors once it accepts again.
                    raise Deferred(f"destination {destination.name} parked")
                for (record, key, partition, job), outcome in zip(records, outcomes, strict=True):
                    if outcome.accepted:
                        accepted[partition] += 1
                    else:
                        source = _source(job, partition)
                        letters.append(rejected_letter(key, source, record, outcome, destination))
        finally:
            self._memory.release_output(held)
        await asyncio.gather(*(self._dead_letters.send(x.key, x.value) for x in letters))
        for letter in letters:
            metrics.DEAD_LETTERS.labels(reason=letter.reason).inc()
        self._paces[index].tokens -= used
        # Only now that every record is accepted or dead-lettered do the cursors
        # move, and only where this worker still owns the partition.
        for partition, job, last in taken:
            count = accepted[partition]
            labels = {"destination": destination.name}
            metrics.ACTIVATION_SENT.labels(**labels, kind=job.kind).inc(count)
            metrics.EXPORTS.labels(**labels, status=job.kind).inc(count)
            if not self._still_owned(partition):
                # Planned again, from what the new owner stores; nothing more is
                # read or written here until then.
                self._generation, self._partitions = None, frozenset()
                await self._tables.flush()  # what was stored before the loss
                return
            activation = self._activations.get(index, partition)
            work = self._passes[index, partition, job.id]
            moved = replace(job, cursor=last, sent=job.sent + count, total=work.total)
            if work.left:
                self._activations.put(index, partition, activation.with_job(moved))
            else:
                self._finish(index, partition, activation, moved)
        await self._tables.flush()

    async def _next_job(self, index: int, partition: int) -> Job | None:
        """The partition's first job with members left; those with none are finished."""
        activation = self._activations.get(index, partition)
        while activation.jobs:
            job = activation.jobs[0]
            work = await self._pass(index, partition, job)
            if work.left:
                return job
            activation = self._finish(index, partition, activation, replace(job, total=work.total))
        return None

    def _finish(self, index: int, partition: int, activation: Activation, job: Job) -> Activation:
        finished = activation.finish(job)
        self._activations.put(index, partition, finished)
        work = self._passes.pop((index, partition, job.id), None)
        total = work.total if work is not None else job.sent
        self._finished[index, job.kind] += total
        log.info(
            "%s %s to %s done in partition %d: %d records",
            job.kind.value,
            job.id,
            self._destinations[index].name,
            partition,
            job.sent,
        )
        return finished

    async def _pass(
        self,
        index: int,
        partition: int,
        job: Job,
        stored: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> _Pass:
        """The members of ``job``'s segments after its cursor, listed once
        (``stored``: the partition's memberships, when already read)."""
        work = self._passes.get((index, partition, job.id))
        if work is not None:
            return work
        if stored is None:
            stored = self._tables.stored_memberships((partition,))[partition]
        members = []
        for position, (profile_id, memberships) in enumerate(stored):
            if position % LIST_CHUNK == LIST_CHUNK - 1:
                await asyncio.sleep(0)  # live batches and probes meanwhile
            if job.cursor is not None and profile_id <= job.cursor:
                continue
            if memberships and _member_of_any(memberships, job.segments):
                members.append(profile_id)
        members.sort(reverse=True)
        work = _Pass(members, job.sent + len(members))
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
        identities = stored_identities(profile)
        attributes = profile.get("attributes") or {}
        built = destination.format.build(attributes, identities, memberships, {})
        if built is None:
            return None
        return Record(encode(built), destination.format.partition_key(identities, profile_id))

    # -- progress --------------------------------------------------------------------

    def progress(self) -> dict[tuple[int, JobKind], tuple[int, int, int]]:
        """(jobs pending, members done, members in total) per destination and kind,
        in the partitions this worker owns, since they were planned. A member is
        done once sent, dead-lettered or skipped (it left the segments); a job
        not yet listed counts what it sent."""
        found = {key: (0, count, count) for key, count in self._finished.items()}
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
                jobs, done, total = progress.get((index, kind), (0, 0, 0))
                labels = {"destination": destination.name, "kind": kind}
                metrics.ACTIVATION_JOBS.labels(**labels).set(jobs)
                metrics.ACTIVATION_REMAINING.labels(**labels).set(total - done)
        if now - self._reported_at < PROGRESS_INTERVAL_S:
            return
        elapsed = now - self._reported_at if self._reported_at else 0.0
        for (index, kind), (jobs, done, total) in sorted(progress.items()):
            if not jobs and (index, kind) not in self._reported:
                continue  # finished before the last report: said by its "done" lines
            before = self._reported.get((index, kind))
            rate = 0.0
            if before is not None and elapsed > 0:
                rate = max(0.0, (done - before) / elapsed)
            left = total - done
            eta = f"about {left / rate:.0f}s left" if rate > 0 else "time left unknown yet"
            if not jobs:
                eta = "done"
            log.info(
                "%s to %s: %d/%d members (%d%%), %.0f/s, %s",
                kind.value,
                self._destinations[index].name,
                done,
                total,
                100 * done // total if total else 100,
                rate,
                eta,
            )
        self._reported = {key: done for key, (jobs, done, _) in progress.items() if jobs}
        self._reported_at = now


def _member_of_any(stored: dict[str, Any], segments: frozenset[str]) -> bool:
    """Whether stored memberships (their JSON: ``[member, time]`` per segment) hold
    one of ``segments``; read without decoding them all, since a listing reads
    every profile of a partition. What is not that JSON counts as a member: the
    slice decodes it and dead-letters it with the reason."""
    if not isinstance(stored, dict):
        return True
    for segment in segments:
        value = stored.get(segment)
        if value is None:
            continue
        if not isinstance(value, list) or not value or not isinstance(value[0], bool):
            return True
        if value[0]:
            return True
    return False


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
        _source(job, partition),
        destination=destination.name,
        stream=destination.settings.stream,
    )


def _source(job: Job, partition: int) -> dict[str, Any]:
    """A backfill or re-send dead letter's source: no input offset caused it."""
    return {"job": job.id, "kind": job.kind.value, "partition": partition}


__all__ = ["ActivationTables", "Activations", "Assignment", "Backfiller"]
