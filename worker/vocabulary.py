"""The worker's words: statuses, outcomes and dead-letter reasons, one enum each.

They are the values of the records' ``status`` fields, of the ``outcome`` and
``reason`` labels of the metrics, and of the dead letters' ``reason`` field
(docs/contract.md): renaming a member changes the external contract.
"""

from __future__ import annotations

from enum import StrEnum

from worker.kinesis import Rejection


class Status(StrEnum):
    """A qualification event's status, and a segment's status in a record."""

    REALIZED = "realized"
    EXISTING = "existing"
    EXITED = "exited"


class ExportStatus(StrEnum):
    """Why a record was sent: the segment status it carries for the event's
    segment, or ``updated`` for a profile update (the ``status`` label of
    ``kd_exports_total``)."""

    REALIZED = "realized"
    EXISTING = "existing"
    EXITED = "exited"
    UPDATED = "updated"
    BACKFILL = "backfill"  # a current member, sent when its segment became mapped
    RESEND = "resend"  # a current member, sent again on request


class JobKind(StrEnum):
    """Why current members are sent: a newly mapped segment, or a request."""

    BACKFILL = "backfill"
    RESEND = "resend"


class ControlOutcome(StrEnum):
    """What became of a command read from the control topic."""

    TAKEN = "taken"
    DEAD_LETTERED = "dead_lettered"


class DeliveryState(StrEnum):
    """How a destination's records go (worker.parking): straight to the stream,
    or to its parking topic because the stream refused them (``parked``), while
    what was parked is sent (``draining``), or by hand (``paused``)."""

    DIRECT = "direct"
    PARKED = "parked"
    DRAINING = "draining"
    PAUSED = "paused"


class QualificationOutcome(StrEnum):
    """What became of a qualification event."""

    EXPORTED = "exported"
    DUPLICATE = "duplicate"
    STALE = "stale"
    UNMAPPED = "unmapped"
    NOT_MEMBER = "not_member"  # an ``exited`` for a profile that is not a member
    DEAD_LETTERED = "dead_lettered"


class ProfileUpdateOutcome(StrEnum):
    """What became of a profile update (or deletion)."""

    EXPORTED = "exported"
    NO_EXPORT = "no_export"
    DELETED = "deleted"
    DEAD_LETTERED = "dead_lettered"


EventOutcome = QualificationOutcome | ProfileUpdateOutcome | ControlOutcome


class DeadLetterReason(StrEnum):
    """Why an event or a record was dead-lettered."""

    # bad input events (worker.events.BadEvent)
    MISSING_KEY = "missing_key"
    INVALID_KEY = "invalid_key"
    KEY_MISMATCH = "key_mismatch"
    MISSING_VALUE = "missing_value"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    INVALID_STATUS = "invalid_status"
    INVALID_TIME = "invalid_time"
    # commands (worker.control) naming what this worker does not have
    UNKNOWN_DESTINATION = "unknown_destination"
    UNMAPPED_SEGMENT = "unmapped_segment"
    # events whose result cannot be stored or sent
    UNENCODABLE = "unencodable"
    STATE_TOO_LARGE = "state_too_large"
    INTERNAL_ERROR = "internal_error"
    # records Kinesis can never accept (worker.kinesis.Rejection)
    RECORD_TOO_LARGE = Rejection.RECORD_TOO_LARGE.value
    INVALID_PARTITION_KEY = Rejection.INVALID_PARTITION_KEY.value
    REJECTED_BY_KINESIS = Rejection.REJECTED_BY_KINESIS.value
