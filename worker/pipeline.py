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

import base64
import logging
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from worker import metrics
from worker.events import BadEvent, ProfileUpdate, Qualification, parse_profile_update
from worker.events import parse_qualification as parse_qualification_event
from worker.export import RecordFormat, encode
from worker.kinesis import KinesisWriter, Outcome, Record
from worker.membership import (
    Outcome as MembershipOutcome,
)
from worker.membership import (
    SegmentState,
    apply_qualification,
    memberships_from_json,
    memberships_to_json,
)
from worker.settings import DestinationSettings, Settings
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


class DeadLetterSink(Protocol):
    async def send(self, key: bytes | None, value: bytes) -> None: ...


@dataclass(slots=True)
class _Profile:
    """A profile's state as the batch sees it (table value or overlay)."""

    attributes: dict[str, Any]
    identity_map: dict[str, Any] | None
    memberships: dict[str, SegmentState]
    scope: Any
    profile_dirty: bool = False
    memberships_dirty: bool = False
    deleted: bool = False


@dataclass(slots=True)
class _Export:
    destination: int
    record: Record
    message: InputMessage
    status: str


# A dead letter: Kafka key, JSON value, reason (the metric's label).
_Letter = tuple[bytes | None, bytes, str]


@dataclass(slots=True)
class BatchReport:
    events: int = 0
    exports: int = 0
    dead_letters: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


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
    ) -> None:
        self._destinations = list(destinations)
        self._tables = tables
        self._dead_letters = dead_letters
        self._mapped = settings.mapped_segments()
        self._profiles_topic = settings.kafka.profiles_topic

    async def process(self, messages: Sequence[InputMessage]) -> BatchReport:
        report = BatchReport(events=len(messages))
        overlay: dict[str, _Profile] = {}
        exports: list[_Export] = []
        letters: list[_Letter] = []
        handled: list[tuple[str, str]] = []
        for message in messages:
            try:
                outcome = self._handle(message, overlay, exports)
            except BadEvent as exc:
                outcome = "dead_lettered"
                letters.append(_dead_letter(message, exc.reason, exc.detail, message.value))
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
                outcome = "dead_lettered"
                letters.append(_dead_letter(message, "internal_error", repr(exc), message.value))
            report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
            handled.append((message.topic, outcome))

        letters.extend(await self._deliver(exports, report))
        for key, value, reason in letters:
            await self._dead_letters.send(key, value)
            metrics.DEAD_LETTERS.labels(reason=reason).inc()
        report.dead_letters = len(letters)
        self._write_state(overlay)
        await self._tables.flush()
        # Counted once the batch is done: a counted event is fully handled.
        for topic, outcome in handled:
            metrics.EVENTS.labels(topic=topic, outcome=outcome).inc()
        return report

    # -- per event -----------------------------------------------------------------

    def _profile(
        self, profile_id: str, message: InputMessage, overlay: dict[str, _Profile]
    ) -> _Profile:
        found = overlay.get(profile_id)
        if found is not None:
            found.scope = message.scope  # the latest event of this key writes it
            return found
        stored = self._tables.get_profile(profile_id, message.scope) or {}
        memberships = self._tables.get_memberships(profile_id, message.scope)
        found = _Profile(
            attributes=stored.get("attributes") or {},
            identity_map=stored.get("identityMap"),
            memberships=memberships_from_json(memberships) if memberships else {},
            scope=message.scope,
        )
        overlay[profile_id] = found
        return found

    def _handle(
        self, message: InputMessage, overlay: dict[str, _Profile], exports: list[_Export]
    ) -> str:
        if message.topic == self._profiles_topic:
            update = parse_profile_update(message.key, message.value)
            if update is None:
                return self._delete(message, overlay, exports)
            return self._update(update, message, overlay, exports)
        return self._qualify(
            parse_qualification_event(message.key, message.value), message, overlay, exports
        )

    def _qualify(
        self,
        event: Qualification,
        message: InputMessage,
        overlay: dict[str, _Profile],
        exports: list[_Export],
    ) -> str:
        mapped = event.segment_id in self._mapped
        if not mapped:
            return MembershipOutcome.UNMAPPED.value
        profile = self._profile(event.profile_id, message, overlay)
        transition = apply_qualification(
            profile.memberships,
            event.segment_id,
            event.status,
            event.qualification_time,
            mapped,
        )
        if transition.changed:
            profile.memberships = transition.memberships
            profile.memberships_dirty = True
            profile.deleted = False  # a deleted profile can qualify again in the same batch
        status = transition.exported_status
        if status is not None:
            # An empty stored map holds no identities either: use the event's.
            identities = profile.identity_map or event.identity_map
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
                    exports,
                    status,
                )
        return transition.outcome.value

    def _update(
        self,
        update: ProfileUpdate,
        message: InputMessage,
        overlay: dict[str, _Profile],
        exports: list[_Export],
    ) -> str:
        profile = self._profile(update.profile_id, message, overlay)
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
                profile.identity_map,
                profile.memberships,
                {},
                message,
                exports,
                "updated",
            )
        return "exported" if exported else "no_export"

    def _delete(
        self, message: InputMessage, overlay: dict[str, _Profile], exports: list[_Export]
    ) -> str:
        assert message.key is not None  # parse_profile_update checked it
        profile_id = message.key.decode()
        profile = self._profile(profile_id, message, overlay)
        exited = {sid: "exited" for sid, state in profile.memberships.items() if state.member}
        exported = False
        for index, destination in enumerate(self._destinations):
            changed = {sid: s for sid, s in exited.items() if destination.format.maps(sid)}
            if changed:
                exported |= self._export(
                    index,
                    profile_id,
                    profile.attributes,
                    profile.identity_map,
                    profile.memberships,
                    changed,
                    message,
                    exports,
                    "exited",
                )
        profile.attributes, profile.identity_map, profile.memberships = {}, None, {}
        profile.deleted = profile.profile_dirty = profile.memberships_dirty = True
        return "exported" if exported else "deleted"

    def _export(
        self,
        index: int,
        profile_id: str,
        attributes: Mapping[str, Any],
        identities: Mapping[str, Any] | None,
        memberships: Mapping[str, SegmentState],
        changed: Mapping[str, Any],
        message: InputMessage,
        exports: list[_Export],
        status: str,
    ) -> bool:
        destination = self._destinations[index]
        record = destination.format.build(attributes, identities, memberships, changed)
        if record is None:
            return False
        key = destination.format.partition_key(identities, profile_id)
        exports.append(_Export(index, Record(encode(record), key), message, status))
        return True

    # -- after the batch ------------------------------------------------------------

    async def _deliver(self, exports: list[_Export], report: BatchReport) -> list[_Letter]:
        letters: list[_Letter] = []
        for index, destination in enumerate(self._destinations):
            mine = [export for export in exports if export.destination == index]
            if not mine:
                continue
            outcomes = await destination.writer.put_all([export.record for export in mine])
            for export, outcome in zip(mine, outcomes, strict=True):
                if outcome.accepted:
                    report.exports += 1
                    metrics.EXPORTS.labels(destination=destination.name, status=export.status).inc()
                else:
                    letters.append(_rejected(export, destination, outcome))
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
                    profile_id,
                    None
                    if profile.deleted
                    else {"attributes": profile.attributes, "identityMap": profile.identity_map},
                    profile.scope,
                )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Dead letters must fit in a Kafka message (1 MB by default) whatever they
# carry: a payload over this is cut, and the source offset points to the whole.
MAX_DEAD_LETTER_PAYLOAD = 256 * 1024


def _payload(value: bytes | None) -> dict[str, Any]:
    if value is None:
        return {"value": None}
    extra: dict[str, Any] = {}
    if len(value) > MAX_DEAD_LETTER_PAYLOAD:
        extra = {"truncated": True, "size": len(value)}
        value = value[:MAX_DEAD_LETTER_PAYLOAD]
    try:
        return {"value": value.decode("utf-8"), **extra}
    except UnicodeDecodeError:
        if extra:  # cut inside a UTF-8 sequence: keep the whole characters
            return {"value": value.decode("utf-8", errors="ignore"), **extra}
        return {"valueBase64": base64.b64encode(value).decode()}


def _dead_letter(
    message: InputMessage,
    reason: str,
    detail: str | None,
    payload: bytes | None,
    **context: Any,
) -> _Letter:
    """A dead letter: why, the source offset, what could not go, and ``context``."""
    body: dict[str, Any] = {
        "reason": reason,
        "detail": detail,
        **context,
        "source": {
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
        },
        "failedAt": _now(),
    }
    body.update(_payload(payload))
    return message.key, orjson.dumps(body), reason


def _rejected(export: _Export, destination: Destination, outcome: Outcome) -> _Letter:
    return _dead_letter(
        export.message,
        outcome.reason or "rejected_by_kinesis",
        outcome.detail,
        export.record.data,
        destination=destination.name,
        stream=destination.settings.stream,
        partitionKey=export.record.partition_key,
    )
