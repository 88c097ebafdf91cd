"""Puts records into one stream: batching, retries, and per-key order.

Order rule: a record is sent only when every earlier record with its partition
key was accepted. Each ``PutRecords`` call therefore holds at most one record
per key (a "wave" takes the head of each key's queue); a failed record stays at
the head of its queue and is retried before anything later with its key,
while other keys move on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from worker.kinesis._shards import ShardMap, ShardRateLimiter
from worker.kinesis._transport import (
    DEFAULT_MAX_RECORD_BYTES,
    FATAL_CODES,
    PutReply,
    Transport,
    TransportError,
)

log = logging.getLogger(__name__)

# Kinesis's limit on a partition key, in Unicode code points.
MAX_PARTITION_KEY_CHARS = 256


class Rejection(StrEnum):
    """Why Kinesis will never accept a record."""

    INVALID_PARTITION_KEY = "invalid_partition_key"
    RECORD_TOO_LARGE = "record_too_large"
    REJECTED_BY_KINESIS = "rejected_by_kinesis"


@dataclass(frozen=True, slots=True)
class Record:
    data: bytes
    partition_key: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """Accepted by Kinesis, or rejected for good: ``reason`` says why (for the
    dead letter); or ``deferred``: not accepted within the caller's patience
    (``detail`` says what the stream answered), for the caller to keep."""

    accepted: bool
    reason: Rejection | None = None
    detail: str | None = None
    deferred: bool = False


ACCEPTED = Outcome(accepted=True)


@dataclass(frozen=True, slots=True)
class WriterConfig:
    max_batch_records: int = 500
    max_batch_bytes: int = 5 * 1024 * 1024
    max_in_flight: int = 8
    backoff_base_s: float = 0.05
    backoff_max_s: float = 5.0
    # Stream missing, access denied: checked again this often until it works.
    fatal_retry_s: float = 10.0
    # Per-shard write limits of provisioned streams; 0 turns a limit off.
    shard_records_per_s: int = 1000
    shard_bytes_per_s: int = 1024 * 1024
    # Shards are listed again this often, to follow resharding.
    shard_refresh_s: float = 60.0


@dataclass(slots=True)
class _Call:
    indices: list[int]


THROTTLED = "ProvisionedThroughputExceededException"


@dataclass(slots=True)
class CallReport:
    """What one PutRecords call did, for metrics."""

    records: int
    size: int
    elapsed: float
    retried: int  # records in the call that had been sent before
    accepted_by_shard: Counter[str] = field(default_factory=Counter)
    accepted_bytes_by_shard: Counter[str] = field(default_factory=Counter)
    failed_by_code: Counter[str] = field(default_factory=Counter)
    throttled_by_shard: Counter[str] = field(default_factory=Counter)
    call_error: str | None = None  # the whole call failed with this code

    @property
    def accepted(self) -> int:
        return sum(self.accepted_by_shard.values())

    @property
    def failed(self) -> int:
        return sum(self.failed_by_code.values())


class WriterObserver:
    """What the writer reports as it works; every hook is a no-op here.

    The worker's metrics subclass it; tests record what they need.
    """

    def call_started(self) -> None: ...

    def call_done(self, report: CallReport) -> None: ...

    def writable_changed(self, writable: bool, error: TransportError | None) -> None: ...

    def shards_listed(self, count: int) -> None: ...

    def rate_limited(self, seconds: float) -> None: ...

    def pending(self, records: int) -> None: ...


class KinesisWriter:
    """Puts records into one stream and reports each record's outcome."""

    def __init__(
        self,
        stream: str,
        transport: Transport,
        config: WriterConfig | None = None,
        observer: WriterObserver | None = None,
    ) -> None:
        self.stream = stream
        self._transport = transport
        self._config = config or WriterConfig()
        self.max_record_bytes = DEFAULT_MAX_RECORD_BYTES
        # False until the stream was seen ACTIVE, and while it refuses writes.
        self.writable = False
        self._observer = observer or WriterObserver()
        self._pending = 0
        self._shards: ShardMap | None = None
        self._shards_listed_at = float("-inf")
        self._limiter = ShardRateLimiter(
            self._config.shard_records_per_s, self._config.shard_bytes_per_s
        )
        # What the stream last answered instead of accepting a record.
        self.last_error: str | None = None

    async def start(self) -> None:
        """Reads the stream's maximum record size; a failure keeps the default."""
        try:
            summary = await self._transport.describe_stream(self.stream)
        except TransportError as exc:
            log.warning(
                "cannot describe stream %s: %s", self.stream, exc, extra={"stream": self.stream}
            )
            return
        self.max_record_bytes = summary.max_record_bytes
        self.writable = summary.status in ("ACTIVE", "UPDATING")
        self._observer.writable_changed(self.writable, None)
        await self._refresh_shards()

    async def _refresh_shards(self) -> None:
        self._shards_listed_at = time.monotonic()
        try:
            shards = ShardMap.from_list_shards(await self._transport.list_shards(self.stream))
        except TransportError as exc:
            log.warning(
                "cannot list shards of %s: %s", self.stream, exc, extra={"stream": self.stream}
            )
            return
        self._shards = shards if len(shards) else None
        self._observer.shards_listed(len(shards))

    async def close(self) -> None:
        await self._transport.close()

    @property
    def shard_count(self) -> int | None:
        """The stream's open shards as last listed; None before the first listing."""
        return None if self._shards is None else len(self._shards)

    def check(self, record: Record) -> Outcome | None:
        """The reason Kinesis would never accept this record, or None."""
        key = record.partition_key
        if not 1 <= len(key) <= MAX_PARTITION_KEY_CHARS:
            return Outcome(False, Rejection.INVALID_PARTITION_KEY, f"key of {len(key)} characters")
        size = len(record.data) + len(key.encode())
        if size > self.max_record_bytes:
            return Outcome(
                False,
                Rejection.RECORD_TOO_LARGE,
                f"{size} bytes (data + key) over the stream's {self.max_record_bytes}",
            )
        return None

    async def put_all(
        self, records: Sequence[Record], patience_s: float | None = None
    ) -> list[Outcome]:
        """Puts every record; returns when each is accepted or rejected for good.

        With ``patience_s``, gives up instead once a failed wave leaves it
        without a record accepted for that long (0: after the first failed
        wave), or at once when the stream refuses writes (``TransportError.fatal``):
        the records not accepted then are ``deferred``, and for each key they
        are the tail of its records, in order. Calls in flight are settled
        first, so a deferred record was never accepted (unless its reply was lost).
        """
        outcomes: list[Outcome | None] = [None] * len(records)
        queues: dict[str, deque[int]] = {}
        for index, record in enumerate(records):
            rejected = self.check(record)
            if rejected is not None:
                outcomes[index] = rejected
            else:
                queues.setdefault(record.partition_key, deque()).append(index)
        isolate: set[int] = set()
        sent_before = bytearray(len(records))  # 1 once a record was in a call
        waiting = len(records) - sum(1 for o in outcomes if o is not None)
        self._pending += waiting
        self._observer.pending(self._pending)
        try:
            return await self._put_queued(
                records, outcomes, queues, isolate, sent_before, patience_s
            )
        finally:
            self._pending -= waiting
            self._observer.pending(self._pending)

    async def _put_queued(
        self,
        records: Sequence[Record],
        outcomes: list[Outcome | None],
        queues: dict[str, deque[int]],
        isolate: set[int],
        sent_before: bytearray,
        patience_s: float | None = None,
    ) -> list[Outcome]:
        attempt = 0
        last_progress = time.monotonic()
        if time.monotonic() - self._shards_listed_at > self._config.shard_refresh_s:
            await self._refresh_shards()
        shard_of: dict[str, str | None] = {}
        while queues:
            wave = [queue[0] for queue in queues.values()]
            if self._shards is not None:
                wave = await self._within_shard_limits(records, wave, shard_of)
            isolated = len(isolate)
            failed, fatal = await self._send_wave(records, wave, outcomes, isolate, sent_before)
            progressed = False
            for index in wave:
                if outcomes[index] is not None:
                    progressed = True
                    queue = queues[records[index].partition_key]
                    queue.popleft()
                    if not queue:
                        del queues[records[index].partition_key]
            if progressed:
                last_progress = time.monotonic()
            if self.writable != (fatal is None):
                self._observer.writable_changed(fatal is None, fatal)
            self.writable = fatal is None
            if fatal is not None:
                self.last_error = str(fatal)
            waited = time.monotonic() - last_progress
            # A call refused as invalid is split into calls of one record, which
            # find the culprit: not a failure of the stream to wait out.
            splitting = len(isolate) > isolated
            if patience_s is not None and (
                fatal is not None or (failed and waited >= patience_s and not splitting)
            ):
                return self._defer(outcomes, queues)
            if fatal is not None:
                log.error(
                    "stream %s refuses writes (%s); retrying in %.0fs",
                    self.stream,
                    fatal,
                    self._config.fatal_retry_s,
                    extra={"stream": self.stream, "code": fatal.code},
                )
                await asyncio.sleep(self._config.fatal_retry_s)
                continue
            if failed:
                # Back off harder only while nothing gets through: a wave in which
                # some records were accepted restarts the backoff, so a share of
                # failures does not slow every later wave down to the cap.
                attempt = 1 if progressed else attempt + 1
                # The exponent is capped: 2**1024 would overflow a float.
                cap = min(
                    self._config.backoff_max_s, self._config.backoff_base_s * 2 ** min(attempt, 32)
                )
                await asyncio.sleep(random.uniform(0, cap))  # full jitter
            else:
                attempt = 0
        return [outcome or ACCEPTED for outcome in outcomes]

    def _defer(
        self, outcomes: list[Outcome | None], queues: dict[str, deque[int]]
    ) -> list[Outcome]:
        deferred = Outcome(False, None, self.last_error, deferred=True)
        for queue in queues.values():
            for index in queue:
                outcomes[index] = deferred
        return [outcome or ACCEPTED for outcome in outcomes]

    async def _within_shard_limits(
        self, records: Sequence[Record], wave: list[int], shard_of: dict[str, str | None]
    ) -> list[int]:
        """The part of the wave its shards can take now; waits when none can."""
        assert self._shards is not None
        while True:
            now = time.monotonic()
            allowed = []
            wait = float("inf")
            for index in wave:
                key = records[index].partition_key
                shard = shard_of.get(key)
                if shard is None and key not in shard_of:
                    shard = shard_of[key] = self._shards.shard_for(key)
                size = len(records[index].data) + len(key.encode())
                if self._limiter.try_take(shard, size, now):
                    allowed.append(index)
                else:
                    wait = min(wait, self._limiter.wait_time(shard, size, now))
            if allowed:
                return allowed
            wait = max(wait, 0.001)
            self._observer.rate_limited(wait)
            await asyncio.sleep(wait)

    async def _send_wave(
        self,
        records: Sequence[Record],
        wave: list[int],
        outcomes: list[Outcome | None],
        isolate: set[int],
        sent_before: bytearray,
    ) -> tuple[int, TransportError | None]:
        calls = self._plan_calls(records, wave, isolate)
        limit = asyncio.Semaphore(self._config.max_in_flight)
        fatal: TransportError | None = None
        failed = 0

        async def run(call: _Call) -> None:
            nonlocal fatal, failed
            async with limit:
                batch = [(records[i].data, records[i].partition_key) for i in call.indices]
                report = CallReport(
                    records=len(batch),
                    size=sum(len(data) + len(key.encode()) for data, key in batch),
                    elapsed=0.0,
                    retried=sum(sent_before[i] for i in call.indices),
                )
                for i in call.indices:
                    sent_before[i] = 1
                loop = asyncio.get_running_loop()
                started = loop.time()
                self._observer.call_started()
                try:
                    replies = await self._transport.put_records(self.stream, batch)
                except TransportError as exc:
                    report.elapsed = loop.time() - started
                    report.call_error = exc.code
                    self.last_error = str(exc)
                    report.failed_by_code[exc.code] += len(call.indices)
                    failed += len(call.indices)
                    if exc.code == "ValidationException":
                        if len(call.indices) == 1:
                            outcomes[call.indices[0]] = Outcome(
                                False, Rejection.REJECTED_BY_KINESIS, str(exc)
                            )
                            failed -= 1
                        else:
                            isolate.update(call.indices)  # find the culprit alone
                    elif exc.fatal:
                        fatal = exc
                    self._observer.call_done(report)
                    return
                report.elapsed = loop.time() - started
                failed += self._settle(records, call, replies, outcomes, report)
                for reply in replies:
                    # A record refused for a reason no retry soon heals (its
                    # stream's KMS key disabled, say) counts as the call would.
                    if reply.error_code in FATAL_CODES and fatal is None:
                        fatal = TransportError(
                            reply.error_code, reply.error_message or "", fatal=True
                        )
                self._observer.call_done(report)

        await asyncio.gather(*(run(call) for call in calls))
        return failed, fatal

    def _settle(
        self,
        records: Sequence[Record],
        call: _Call,
        replies: list[PutReply],
        outcomes: list[Outcome | None],
        report: CallReport,
    ) -> int:
        """Records each reply's outcome; returns how many records failed."""
        failed = 0
        for index, reply in zip(call.indices, replies, strict=True):
            record = records[index]
            if reply.error_code is None:
                outcomes[index] = ACCEPTED
                shard = reply.shard_id or "unknown"
                report.accepted_by_shard[shard] += 1
                report.accepted_bytes_by_shard[shard] += len(record.data) + len(
                    record.partition_key.encode()
                )
            else:
                failed += 1
                report.failed_by_code[reply.error_code] += 1
                self.last_error = f"{reply.error_code}: {reply.error_message}"
                if reply.error_code == THROTTLED:
                    shard_id = (
                        self._shards.shard_for(record.partition_key) if self._shards else None
                    )
                    report.throttled_by_shard[shard_id or "unknown"] += 1
        return failed

    def _plan_calls(
        self, records: Sequence[Record], wave: list[int], isolate: set[int]
    ) -> list[_Call]:
        calls: list[_Call] = []
        current: list[int] = []
        size = 0
        for index in wave:
            record = records[index]
            record_size = len(record.data) + len(record.partition_key.encode())
            if index in isolate:
                calls.append(_Call([index]))
                continue
            if current and (
                len(current) >= self._config.max_batch_records
                or size + record_size > self._config.max_batch_bytes
            ):
                calls.append(_Call(current))
                current, size = [], 0
            current.append(index)
            size += record_size
        if current:
            calls.append(_Call(current))
        return calls
