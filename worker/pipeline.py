"""One batch of input events in, Kinesis records and dead letters out.

The order of work is what makes delivery at-least-once (REFERENCE: "the crash
window between state and side effect"): state changes of a batch are held in
an overlay while its records are put; the tables are written only after every
record of the batch was accepted by Kinesis or dead-lettered, and the batch is
acknowledged (its offsets become committable) after that. A crash at any
point replays events whose effects the tables do not hold yet, so their
exports are made again: duplicates are possible, losses are not.

Kept free of Faust: state, Kinesis and the dead-letter topic come in through
small protocols, so the whole flow runs in unit tests with fakes.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import orjson

from worker import deadletters, metrics
from worker.budget import MemoryBudget
from worker.control import Action, parse_command
from worker.deadletters import DeadLetter
from worker.errors import RetryLater
from worker.events import BadEvent, ProfileUpdate, Qualification, parse_profile_update
from worker.events import parse_qualification as parse_qualification_event
from worker.export import RecordFormat, encode
from worker.kinesis import KinesisWriter, Outcome, Record, Rejection
from worker.membership import (
    SegmentState,
    apply_qualification,
    memberships_from_json,
    memberships_to_json,
)
from worker.settings import DestinationSettings, Settings
from worker.vocabulary import (
    ControlOutcome,
    EventOutcome,
    ExportStatus,
    ProfileUpdateOutcome,
    QualificationOutcome,
    Status,
)
from worker.vocabulary import DeadLetterReason as Reason
from worker.xdm import deep_merge, same_value, selected_values_differ

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InputMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # The framework's event: tables are read and written in its partition.
    scope: Any = None


class StateTables(Protocol):
    """The two tables, keyed by profile id, read and written in a message's scope."""

    def get_profile(self, profile_id: str, scope: Any) -> dict[str, Any] | None: ...

    def get_memberships(self, profile_id: str, scope: Any) -> dict[str, Any] | None: ...

    def put_profile(self, profile_id: str, value: dict[str, Any] | None, scope: Any) -> None: ...

    def put_memberships(
        self, profile_id: str, value: dict[str, Any] | None, scope: Any
    ) -> None: ...

    async def flush(self) -> None:
        """Returns once every write so far is durable."""


class Requests(Protocol):
    """Where control commands go (worker.backfill.Activations)."""

    def request(
        self, destination: int, partition: int, job_id: str, segments: frozenset[str]
    ) -> None: ...


class DeadLetterSink(Protocol):
    async def send(self, key: bytes | None, value: bytes) -> None: ...


@dataclass(slots=True)
class Parked:
    """A record kept in Kafka while its stream refuses it (worker.parking), with
    what its dead letter and its metrics need once it is sent."""

    record: Record
    status: ExportStatus
    source: dict[str, Any]  # the input event's topic, partition, offset
    key: bytes | None  # the input event's key
    offset: int = -1  # in the parking partition, once written
    timestamp: float = 0.0  # when it was parked (Kafka's timestamp), seconds


class Router(Protocol):
    """Which records go to their stream and which are parked (worker.parking)."""

    def parks(self, destination: int, partition: int) -> bool: ...

    def failed(self, destination: int, reason: str | None) -> None: ...

    async def park(self, destination: int, records: Sequence[tuple[int, Parked]]) -> None: ...

    def pause(self, destination: int, partition: int, paused: bool) -> None: ...


# What one profile's stored state may weigh (key + JSON value): a changelog
# message over the broker's limit (max.message.bytes, 1,048,588 by default) is
# refused, and the batch could only be retried. Kafka counts the record and
# batch headers too: room is left for them.
MAX_STATE_BYTES = 1_000_000 - 16 * 1024


@dataclass(slots=True)
class _Profile:
    """A profile's state as the batch sees it (table value or overlay)."""

    attributes: dict[str, Any]
    identity_map: dict[str, Any] | None
    memberships: dict[str, SegmentState]
    scope: Any
    # The identityMap of the last applied qualification that carried one: the
    # profile's identities while the profile table holds none (contract section 1).
    remembered: dict[str, Any] | None = None
    profile_dirty: bool = False
    memberships_dirty: bool = False
    deleted: bool = False

    def snapshot(self) -> tuple[Any, ...]:
        # Shallow is enough: handling replaces these values, never mutates them.
        return tuple(getattr(self, name) for name in _PROFILE_FIELDS)

    def restore(self, snapshot: tuple[Any, ...]) -> None:
        for name, value in zip(_PROFILE_FIELDS, snapshot, strict=True):
            setattr(self, name, value)

    @property
    def identities(self) -> dict[str, Any] | None:
        """What its records carry: the profile table's identities, else the remembered."""
        return self.identity_map or self.remembered

    def stored(self) -> dict[str, Any]:
        """The profile table's value."""
        value = {"attributes": self.attributes, "identityMap": self.identity_map}
        if self.remembered is not None:
            value["rememberedIdentityMap"] = self.remembered
        return value


def stored_identities(stored: Mapping[str, Any]) -> dict[str, Any] | None:
    """A stored profile's identities as its records carry them (``_Profile.identities``)."""
    identities: dict[str, Any] | None = stored.get("identityMap") or stored.get(
        "rememberedIdentityMap"
    )
    return identities


_PROFILE_FIELDS = tuple(f.name for f in fields(_Profile))
# What the profile table stores, with its place in a snapshot.
_STORED_PROFILE_FIELDS = tuple(
    (name, _PROFILE_FIELDS.index(name)) for name in ("attributes", "identity_map", "remembered")
)


@dataclass(slots=True)
class _Export:
    destination: int
    record: Record
    message: InputMessage
    status: ExportStatus


@dataclass(slots=True)
class _Batch:
    """What a batch holds while it is processed."""

    overlay: dict[str, _Profile] = field(default_factory=dict)
    exports: list[_Export] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    held: int = 0  # bytes of exports and letters taken from the memory budget
    # The profile the current event touched, and its state before the event.
    touched: tuple[str, _Profile, tuple[Any, ...]] | None = None


@dataclass(slots=True)
class BatchReport:
    """What one call of ``process`` did: events by outcome, records accepted,
    dead letters written (those of a retried batch count again)."""

    events: int = 0
    exports: int = 0
    dead_letters: int = 0
    outcomes: dict[EventOutcome, int] = field(default_factory=dict)


class Destination:
    """A configured destination: its record format and its writer."""

    def __init__(self, settings: DestinationSettings, writer: KinesisWriter) -> None:
        self.settings = settings
        self.format = RecordFormat(settings)
        self.writer = writer
        self.name = settings.name


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        destinations: Sequence[Destination],
        tables: StateTables,
        dead_letters: DeadLetterSink,
        memory: MemoryBudget | None = None,
        activations: Requests | None = None,
        router: Router | None = None,
    ) -> None:
        """``router``: parks the records of a stream that refuses them; without
        one, a batch waits until every stream accepted its records."""
        self._destinations = list(destinations)
        self._router = router
        self._destination_index = {d.name: i for i, d in enumerate(self._destinations)}
        self._activations = activations
        self._control_topic = settings.control_topic
        self._tables = tables
        self._dead_letters = dead_letters
        self._memory = memory or MemoryBudget(settings.runtime.max_buffer_bytes)
        self._mapped = settings.mapped_segments()
        self._profiles_topic = settings.kafka.profiles_topic

    async def process(self, messages: Sequence[InputMessage]) -> BatchReport:
        report = BatchReport(events=len(messages))
        batch = _Batch()
        handled: Counter[tuple[str, EventOutcome]] = Counter()
        try:
            for message in messages:
                outcome = self._apply(message, batch)
                report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
                handled[message.topic, outcome] += 1
                if self._memory.over:
                    # Hold no more than the budget: deliver what is built so far.
                    await self._flush(batch, report)
            await self._flush(batch, report)
        finally:
            self._memory.release_output(batch.held)
        self._write_state(batch.overlay)
        await self._tables.flush()
        # Counted once the batch is done: a counted event is fully handled.
        for (topic, outcome), count in handled.items():
            metrics.EVENTS.labels(topic=topic, outcome=outcome).inc(count)
        return report

    async def dead_letter(self, message: InputMessage, reason: Reason, detail: str) -> None:
        """Dead-letters ``message`` alone (a poison event isolated by the caller)."""
        letter = _dead_letter(message, reason, detail, message.value)
        await self._dead_letters.send(letter.key, letter.value)
        metrics.DEAD_LETTERS.labels(reason=reason).inc()
        metrics.EVENTS.labels(topic=message.topic, outcome=self._dead_lettered(message)).inc()

    def _dead_lettered(self, message: InputMessage) -> EventOutcome:
        if message.topic == self._control_topic:
            return ControlOutcome.DEAD_LETTERED
        if message.topic == self._profiles_topic:
            return ProfileUpdateOutcome.DEAD_LETTERED
        return QualificationOutcome.DEAD_LETTERED

    def _apply(self, message: InputMessage, batch: _Batch) -> EventOutcome:
        """Handles one event: applied whole, or dead-lettered with no effect at all."""
        exports_before = len(batch.exports)
        batch.touched = None
        try:
            outcome = self._handle(message, batch)
            self._check_state(batch)
        except BadEvent as exc:
            reason, detail = exc.reason, exc.detail
        except RetryLater:
            raise  # the whole batch is retried (worker.batching)
        except (orjson.JSONEncodeError, RecursionError) as exc:
            # Nested too deep to encode (orjson stops at 255 levels), or to merge.
            reason, detail = Reason.UNENCODABLE, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # never let one event stop the worker
            # The traceback without the exception's message, which may quote values.
            log.error(
                "unexpected %s on %s[%d]; event dead-lettered",
                type(exc).__name__,
                message.topic,
                message.partition,
                extra={
                    "topic": message.topic,
                    "partition": message.partition,
                    "offset": message.offset,
                    "traceback": "".join(traceback.format_tb(exc.__traceback__)),
                },
            )
            reason, detail = Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
        else:
            built = sum(len(export.record.data) for export in batch.exports[exports_before:])
            batch.held += built
            self._memory.take_output(built)
            return outcome
        # Undo whatever the event did: its state change and its exports.
        if batch.touched is not None:
            _, profile, before = batch.touched
            profile.restore(before)
        del batch.exports[exports_before:]
        self._hold(batch, _dead_letter(message, reason, detail, message.value))
        return self._dead_lettered(message)

    def _hold(self, batch: _Batch, letter: DeadLetter) -> None:
        batch.letters.append(letter)
        batch.held += letter.size
        self._memory.take_output(letter.size)

    def _check_state(self, batch: _Batch) -> None:
        """The state an event leaves must be storable: JSON, within the changelog's limit."""
        if batch.touched is None:
            return
        profile_id, profile, before = batch.touched
        if profile.deleted:
            return
        size = len(profile_id.encode())
        if any(getattr(profile, name) is not before[i] for name, i in _STORED_PROFILE_FIELDS):
            stored = orjson.dumps(profile.stored())
            if size + len(stored) > MAX_STATE_BYTES:
                raise BadEvent(
                    Reason.STATE_TOO_LARGE,
                    f"the profile would weigh {size + len(stored)} bytes stored, "
                    f"over the {MAX_STATE_BYTES} a changelog message may hold",
                )
        if profile.memberships is not before[2]:
            stored = orjson.dumps(memberships_to_json(profile.memberships))
            if size + len(stored) > MAX_STATE_BYTES:
                raise BadEvent(
                    Reason.STATE_TOO_LARGE,
                    f"the memberships would weigh {size + len(stored)} bytes stored, "
                    f"over the {MAX_STATE_BYTES} a changelog message may hold",
                )

    async def _flush(self, batch: _Batch, report: BatchReport) -> None:
        """Delivers the exports built so far, then sends the dead letters."""
        exports, batch.exports = batch.exports, []
        for letter in await self._deliver(exports, report):
            self._hold(batch, letter)
        delivered = sum(len(export.record.data) for export in exports)
        letters, batch.letters = batch.letters, []
        # All at once: the producer lingers before each request it sends.
        await asyncio.gather(*(self._dead_letters.send(x.key, x.value) for x in letters))
        for letter in letters:
            metrics.DEAD_LETTERS.labels(reason=letter.reason).inc()
        report.dead_letters += len(letters)
        freed = delivered + sum(letter.size for letter in letters)
        batch.held -= freed
        self._memory.release_output(freed)

    # -- per event -----------------------------------------------------------------

    def _profile(self, profile_id: str, message: InputMessage, batch: _Batch) -> _Profile:
        found = batch.overlay.get(profile_id)
        if found is None:
            stored = self._tables.get_profile(profile_id, message.scope) or {}
            memberships = self._tables.get_memberships(profile_id, message.scope)
            found = _Profile(
                attributes=stored.get("attributes") or {},
                identity_map=stored.get("identityMap"),
                memberships=memberships_from_json(memberships) if memberships else {},
                scope=message.scope,
                remembered=stored.get("rememberedIdentityMap"),
            )
            batch.overlay[profile_id] = found
        batch.touched = (profile_id, found, found.snapshot())
        found.scope = message.scope  # the latest event of this key writes it
        return found

    def _handle(self, message: InputMessage, batch: _Batch) -> EventOutcome:
        if message.topic == self._control_topic:
            return self._command(message)
        if message.topic == self._profiles_topic:
            update = parse_profile_update(message.key, message.value)
            if update is None:
                return self._delete(message, batch)
            return self._update(update, message, batch)
        return self._qualify(parse_qualification_event(message.key, message.value), message, batch)

    def _command(self, message: InputMessage) -> ControlOutcome:
        """A request from the control topic, queued for this message's partition;
        it is taken (committed) with the batch, and run between batches."""
        command = parse_command(message.key, message.value)
        index = self._destination_index.get(command.destination)
        if index is None:
            raise BadEvent(
                Reason.UNKNOWN_DESTINATION,
                f"no destination named {command.destination!r} in this worker's configuration",
            )
        if command.action is not Action.RESEND:
            if self._router is None:
                raise RuntimeError("pause and resume need the parking router")
            self._router.pause(index, message.partition, command.action is Action.PAUSE)
            return ControlOutcome.TAKEN
        mapped = self._destinations[index].format.segment_ids
        segments = mapped if command.segments is None else command.segments
        if not segments <= mapped:
            raise BadEvent(
                Reason.UNMAPPED_SEGMENT,
                f"destination {command.destination!r} does not map {sorted(segments - mapped)}",
            )
        if self._activations is None:
            raise RuntimeError("control commands need the activations")
        self._activations.request(index, message.partition, command.id, segments)
        return ControlOutcome.TAKEN

    def _qualify(
        self,
        event: Qualification,
        message: InputMessage,
        batch: _Batch,
    ) -> QualificationOutcome:
        # Memberships of unmapped segments are kept too, with the same rules, so
        # that mapping a segment later knows its members (worker.backfill); only
        # mapped segments are exported, and only they set remembered identities
        # (contract section 1).
        mapped = event.segment_id in self._mapped
        profile = self._profile(event.profile_id, message, batch)
        transition = apply_qualification(
            profile.memberships, event.segment_id, event.status, event.qualification_time
        )
        if transition.changed:
            profile.memberships = transition.memberships
            profile.memberships_dirty = True
            profile.deleted = False  # a deleted profile can qualify again in the same batch
        if not mapped:
            return QualificationOutcome.UNMAPPED
        if (
            transition.outcome != QualificationOutcome.STALE
            and event.identity_map
            and event.identity_map != profile.remembered
        ):
            profile.remembered = event.identity_map
            profile.profile_dirty = True
            profile.deleted = False
        status = transition.exported_status
        if status is not None:
            identities = profile.identities
            for index, destination in enumerate(self._destinations):
                if not destination.format.maps(event.segment_id):
                    continue
                self._export(
                    index,
                    event.profile_id,
                    profile.attributes,
                    identities,
                    profile.memberships,
                    {event.segment_id: status},
                    message,
                    batch.exports,
                    ExportStatus(status),
                )
        return transition.outcome

    def _update(
        self,
        update: ProfileUpdate,
        message: InputMessage,
        batch: _Batch,
    ) -> ProfileUpdateOutcome:
        profile = self._profile(update.profile_id, message, batch)
        before = profile.attributes
        after = deep_merge(before, update.attributes) if update.attributes else before
        identities_changed = (
            update.identity_map is not None and update.identity_map != profile.identity_map
        )
        if not same_value(after, before) or identities_changed:
            profile.attributes = after
            if update.identity_map is not None:
                profile.identity_map = update.identity_map
            profile.profile_dirty = True
            profile.deleted = False
        exported = False
        for index, destination in enumerate(self._destinations):
            if not (
                identities_changed
                or selected_values_differ(before, after, destination.format.attribute_paths)
            ):
                continue
            exported |= self._export(
                index,
                update.profile_id,
                profile.attributes,
                profile.identities,
                profile.memberships,
                {},
                message,
                batch.exports,
                ExportStatus.UPDATED,
            )
        return ProfileUpdateOutcome.EXPORTED if exported else ProfileUpdateOutcome.NO_EXPORT

    def _delete(self, message: InputMessage, batch: _Batch) -> ProfileUpdateOutcome:
        assert message.key is not None  # parse_profile_update checked it
        profile_id = message.key.decode()
        profile = self._profile(profile_id, message, batch)
        exited = {sid: Status.EXITED for sid, state in profile.memberships.items() if state.member}
        exported = False
        for index, destination in enumerate(self._destinations):
            changed = {sid: s for sid, s in exited.items() if destination.format.maps(sid)}
            if changed:
                exported |= self._export(
                    index,
                    profile_id,
                    profile.attributes,
                    profile.identities,
                    profile.memberships,
                    changed,
                    message,
                    batch.exports,
                    ExportStatus.EXITED,
                )
        profile.attributes, profile.identity_map, profile.memberships = {}, None, {}
        profile.remembered = None
        profile.deleted = profile.profile_dirty = profile.memberships_dirty = True
        return ProfileUpdateOutcome.EXPORTED if exported else ProfileUpdateOutcome.DELETED

    def _export(
        self,
        index: int,
        profile_id: str,
        attributes: Mapping[str, Any],
        identities: Mapping[str, Any] | None,
        memberships: Mapping[str, SegmentState],
        changed: Mapping[str, Status],
        message: InputMessage,
        exports: list[_Export],
        status: ExportStatus,
    ) -> bool:
        destination = self._destinations[index]
        record = destination.format.build(attributes, identities, memberships, changed)
        if record is None:
            return False
        key = destination.format.partition_key(identities, profile_id)
        exports.append(_Export(index, Record(encode(record), key), message, status))
        return True

    # -- after the batch ------------------------------------------------------------

    async def _deliver(self, exports: list[_Export], report: BatchReport) -> list[DeadLetter]:
        """Each destination's records to its stream (or its parking topic), all
        destinations at once: one that waits holds none of the others."""
        by_destination: list[list[_Export]] = [[] for _ in self._destinations]
        letters: list[DeadLetter] = []
        for export in exports:
            if self._memory.fits(len(export.record.data)):
                by_destination[export.destination].append(export)
            else:
                destination = self._destinations[export.destination]
                letters.append(_too_large_for_memory(export, destination, self._memory.share))
        # Each one runs to its end even when another fails: none is left putting
        # while the batch is retried.
        done = await asyncio.gather(
            *(self._deliver_to(i, mine, report) for i, mine in enumerate(by_destination) if mine),
            return_exceptions=True,
        )
        for result in done:
            if isinstance(result, BaseException):
                raise result
            letters.extend(result)
        return letters

    async def _deliver_to(
        self, index: int, exports: list[_Export], report: BatchReport
    ) -> list[DeadLetter]:
        destination = self._destinations[index]
        router = self._router
        direct, parked = exports, list[_Export]()
        if router is not None:
            direct, parked = [], []
            for export in exports:
                (parked if router.parks(index, export.message.partition) else direct).append(export)
        letters: list[DeadLetter] = []
        accepted: Counter[ExportStatus] = Counter()
        if direct:
            patience = None if router is None else destination.settings.park_after_s
            records = [export.record for export in direct]
            outcomes = await destination.writer.put_all(records, patience)
            deferred = []
            for export, outcome in zip(direct, outcomes, strict=True):
                if outcome.accepted:
                    accepted[export.status] += 1
                elif outcome.deferred:
                    deferred.append(export)
                else:
                    letters.append(_rejected(export, destination, outcome))
            if deferred and router is not None:
                router.failed(index, destination.writer.last_error)
                # Other partitions than those parked already: their order holds.
                parked.extend(deferred)
        if parked and router is not None:
            await router.park(index, [(e.message.partition, _parked(e)) for e in parked])
        for status, count in accepted.items():
            report.exports += count
            metrics.EXPORTS.labels(destination=destination.name, status=status).inc(count)
        return letters

    def _write_state(self, overlay: dict[str, _Profile]) -> None:
        for profile_id, profile in overlay.items():
            if profile.memberships_dirty:
                self._tables.put_memberships(
                    profile_id,
                    None if profile.deleted else memberships_to_json(profile.memberships),
                    profile.scope,
                )
            if profile.profile_dirty:
                self._tables.put_profile(
                    profile_id, None if profile.deleted else profile.stored(), profile.scope
                )


def _dead_letter(
    message: InputMessage,
    reason: Reason,
    detail: str | None,
    payload: bytes | None,
    **context: Any,
) -> DeadLetter:
    return deadletters.build(message.key, reason, detail, payload, _source(message), **context)


def _source(message: InputMessage) -> dict[str, Any]:
    return {"topic": message.topic, "partition": message.partition, "offset": message.offset}


def _rejected(export: _Export, destination: Destination, outcome: Outcome) -> DeadLetter:
    message = export.message
    return rejected_letter(message.key, _source(message), export.record, outcome, destination)


def _parked(export: _Export) -> Parked:
    message = export.message
    return Parked(export.record, export.status, _source(message), message.key)


def rejected_letter(
    key: bytes | None,
    source: dict[str, Any],
    record: Record,
    outcome: Outcome,
    destination: Destination,
) -> DeadLetter:
    """The dead letter of a record the destination's stream will never accept."""
    return deadletters.build(
        key,
        Reason(outcome.reason or Rejection.REJECTED_BY_KINESIS),
        outcome.detail,
        record.data,
        source,
        destination=destination.name,
        stream=destination.settings.stream,
        partitionKey=record.partition_key,
    )


def _too_large_for_memory(export: _Export, destination: Destination, limit: int) -> DeadLetter:
    detail = (
        f"{len(export.record.data)} bytes, over the {limit} bytes the worker's memory "
        "budget keeps for records (half of runtime.max_buffer_bytes)"
    )
    return _rejected(export, destination, Outcome(False, Rejection.RECORD_TOO_LARGE, detail))
