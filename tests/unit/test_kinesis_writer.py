"""KinesisWriter over a scripted fake transport: limits, retries and per-key order."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.kinesis import (
    CallReport,
    KinesisWriter,
    Outcome,
    PutReply,
    Record,
    Rejection,
    StreamSummary,
    Transport,
    TransportError,
    WriterConfig,
    WriterObserver,
)

THROTTLED = "ProvisionedThroughputExceededException"
INTERNAL = "InternalFailure"
MIB = 1024 * 1024

# No real waiting: backoff caps of 0 make every retry sleep 0 s.
FAST = WriterConfig(backoff_base_s=0.0, backoff_max_s=0.0, fatal_retry_s=0.001)


class RecordingObserver(WriterObserver):
    def __init__(self) -> None:
        self.reports: list[CallReport] = []
        self.started = 0
        self.writable: list[tuple[bool, TransportError | None]] = []
        self.pending_seen: list[int] = []

    def call_started(self) -> None:
        self.started += 1

    def call_done(self, report: CallReport) -> None:
        self.reports.append(report)

    def writable_changed(self, writable: bool, error: TransportError | None) -> None:
        self.writable.append((writable, error))

    def pending(self, records: int) -> None:
        self.pending_seen.append(records)


@dataclass
class Call:
    """One put_records call as the fake saw it, and what it answered."""

    records: list[tuple[bytes, str]]
    accepted: list[tuple[bytes, str]] = field(default_factory=list)
    raised: TransportError | None = None


class FakeTransport:
    """A scripted Kinesis: records every call, fails what it is told to.

    - ``record_errors[data]``: error codes given to that record on its next
      sends, one per send; once used up the record is accepted.
    - ``call_errors``: raised by the next calls, one per call (None: no error).
    - ``invalid``: data that Kinesis refuses; a call holding one raises
      ``ValidationException`` (fatal, as the real transport translates a 400).
    - ``on_call``: run at the start of every call (to look at the world then).
    """

    def __init__(
        self,
        *,
        status: str = "ACTIVE",
        max_record_bytes: int = MIB,
        record_errors: dict[bytes, list[str]] | None = None,
        call_errors: Sequence[TransportError | None] = (),
        invalid: set[bytes] | None = None,
        on_call: Callable[[list[tuple[bytes, str]]], None] | None = None,
    ) -> None:
        self.summary = StreamSummary(status, 1, max_record_bytes)
        self.describe_error: TransportError | None = None
        self.record_errors = {k: deque(v) for k, v in (record_errors or {}).items()}
        self.call_errors: deque[TransportError | None] = deque(call_errors)
        self.invalid = invalid or set()
        self.on_call = on_call
        self.calls: list[Call] = []
        self.streams: list[str] = []
        self.described: list[str] = []
        self.closed = False

    async def put_records(
        self, stream: str, records: Sequence[tuple[bytes, str]]
    ) -> list[PutReply]:
        batch = list(records)
        if self.on_call is not None:
            self.on_call(batch)
        call = Call(batch)
        self.calls.append(call)
        self.streams.append(stream)
        error = self.call_errors.popleft() if self.call_errors else None
        if error is None and any(data in self.invalid for data, _ in batch):
            error = TransportError("ValidationException", "1 validation error", fatal=True)
        if error is not None:
            call.raised = error
            raise error
        replies = []
        for data, key in batch:
            script = self.record_errors.get(data)
            if script:
                code = script.popleft()
                replies.append(PutReply(error_code=code, error_message="try again"))
            else:
                call.accepted.append((data, key))
                replies.append(PutReply(shard_id="shardId-000000000000", sequence_number="1"))
        return replies

    async def describe_stream(self, stream: str) -> StreamSummary:
        self.described.append(stream)
        if self.describe_error is not None:
            raise self.describe_error
        return self.summary

    async def list_shards(self, stream: str) -> list[dict[str, Any]]:
        return []  # no shard map: the writer does not rate-limit

    async def close(self) -> None:
        self.closed = True

    # -- what the tests look at --

    @property
    def accepted(self) -> list[tuple[bytes, str]]:
        return [record for call in self.calls for record in call.accepted]

    def sent(self) -> list[tuple[bytes, str]]:
        return [record for call in self.calls for record in call.records]


def check_fake_is_a_transport(fake: FakeTransport) -> Transport:
    return fake  # mypy checks the protocol here


def record(key: str, n: int, size: int = 0) -> Record:
    data = f"{key}#{n}".encode()
    return Record(data + b"." * max(0, size - len(data)), key)


def assert_per_key_order(records: Sequence[Record], fake: FakeTransport) -> None:
    """Each key's accepted sequence is its input sequence; no record is sent
    while an earlier (eventually accepted) one of its key is unaccepted; no
    call repeats a key."""
    position = {r.data: i for i, r in enumerate(records)}
    ever_accepted = {data for data, _ in fake.accepted}
    earlier: dict[bytes, list[bytes]] = {}
    by_key: dict[str, list[bytes]] = {}
    for r in records:
        # Records rejected for good (never accepted) hold nothing back.
        earlier[r.data] = [d for d in by_key.get(r.partition_key, []) if d in ever_accepted]
        by_key.setdefault(r.partition_key, []).append(r.data)
    accepted: set[bytes] = set()
    for call in fake.calls:
        keys = [key for _, key in call.records]
        assert len(keys) == len(set(keys)), f"a call holds two records of one key: {keys}"
        for data, _ in call.records:
            missing = [d for d in earlier[data] if d not in accepted]
            assert not missing, f"{data!r} sent before {missing!r} was accepted"
        accepted.update(data for data, _ in call.accepted)
    for key, expected in by_key.items():
        got = [data for data, k in fake.accepted if k == key]
        got_once = list(dict.fromkeys(got))
        assert got == got_once, f"a record of {key} was accepted twice"
        sendable = [d for d in expected if d in accepted]
        assert got == sendable, f"order of {key}: {got} != {sendable}"
        assert sorted(got, key=position.__getitem__) == got


# -- start, check, limits ------------------------------------------------------------------


async def test_start_reads_the_stream() -> None:
    fake = FakeTransport(max_record_bytes=2 * MIB)
    writer = KinesisWriter("s", fake)
    assert writer.writable is False
    await writer.start()
    assert fake.described == ["s"]
    assert writer.max_record_bytes == 2 * MIB
    assert writer.writable is True
    await writer.close()
    assert fake.closed


@pytest.mark.parametrize(("status", "writable"), [("CREATING", False), ("UPDATING", True)])
async def test_start_writable_by_status(status: str, writable: bool) -> None:
    writer = KinesisWriter("s", FakeTransport(status=status))
    await writer.start()
    assert writer.writable is writable


async def test_start_failure_keeps_the_default_size() -> None:
    fake = FakeTransport(max_record_bytes=10)
    fake.describe_error = TransportError("ResourceNotFoundException", "no stream", fatal=True)
    writer = KinesisWriter("s", fake)
    await writer.start()
    assert writer.max_record_bytes == MIB
    assert writer.writable is False


async def test_empty_input() -> None:
    fake = FakeTransport()
    assert await KinesisWriter("s", fake, FAST).put_all([]) == []
    assert fake.calls == []


async def test_calls_go_to_the_writers_stream() -> None:
    fake = FakeTransport()
    outcomes = await KinesisWriter("my-stream", fake, FAST).put_all([record("a", 1)])
    assert outcomes == [Outcome(accepted=True)]
    assert fake.streams == ["my-stream"]
    assert fake.sent() == [(b"a#1", "a")]


async def test_at_most_500_records_per_call() -> None:
    fake = FakeTransport()
    records = [record(f"k{i}", 0) for i in range(1201)]
    outcomes = await KinesisWriter("s", fake, FAST).put_all(records)
    assert all(o.accepted for o in outcomes)
    assert [len(c.records) for c in fake.calls] == [500, 500, 201]
    assert [data for data, _ in fake.sent()] == [r.data for r in records]


async def test_at_most_5_mib_per_call() -> None:
    fake = FakeTransport()
    # 1,000,000 bytes + key each: five fit in 5 MiB (5,242,880), a sixth does not.
    records = [record(f"k{i}", 0, size=1_000_000) for i in range(11)]
    outcomes = await KinesisWriter("s", fake, FAST).put_all(records)
    assert all(o.accepted for o in outcomes)
    assert [len(c.records) for c in fake.calls] == [5, 5, 1]
    for call in fake.calls:
        assert sum(len(d) + len(k.encode()) for d, k in call.records) <= 5 * MIB


async def test_a_record_of_exactly_the_maximum_size_fits() -> None:
    fake = FakeTransport()
    key = "k"
    outcomes = await KinesisWriter("s", fake, FAST).put_all([Record(b"x" * (MIB - 1), key)])
    assert outcomes == [Outcome(accepted=True)]


async def test_batching_respects_a_smaller_config() -> None:
    fake = FakeTransport()
    config = WriterConfig(max_batch_records=3, max_batch_bytes=100, backoff_max_s=0.0)
    records = [record(f"k{i}", 0, size=30) for i in range(8)]
    await KinesisWriter("s", fake, config).put_all(records)
    for call in fake.calls:
        assert len(call.records) <= 3
        assert sum(len(d) + len(k) for d, k in call.records) <= 100
    assert len(fake.accepted) == 8


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (Record(b"x" * MIB, "k"), "record_too_large"),  # data + key = 1 MiB + 1
        (Record(b"x", ""), "invalid_partition_key"),
        (Record(b"x", "k" * 257), "invalid_partition_key"),
    ],
)
async def test_records_kinesis_never_accepts_are_rejected_unsent(bad: Record, reason: str) -> None:
    fake = FakeTransport()
    writer = KinesisWriter("s", fake, FAST)
    good = [record("a", 1), record("b", 1)]
    outcomes = await writer.put_all([good[0], bad, good[1]])
    assert outcomes[0].accepted
    assert outcomes[2].accepted
    assert outcomes[1].accepted is False
    assert outcomes[1].reason == reason
    assert outcomes[1].detail
    assert bad.data not in [data for data, _ in fake.sent()]
    assert writer.check(bad) == outcomes[1]


async def test_a_256_character_key_is_fine() -> None:
    fake = FakeTransport()
    outcomes = await KinesisWriter("s", fake, FAST).put_all([Record(b"x", "k" * 256)])
    assert outcomes == [Outcome(accepted=True)]


async def test_the_streams_smaller_maximum_applies_after_start() -> None:
    fake = FakeTransport(max_record_bytes=100)
    writer = KinesisWriter("s", fake, FAST)
    fits = Record(b"x" * 99, "k")  # 100 bytes with the key
    too_big = Record(b"y" * 100, "k")  # 101
    assert writer.check(too_big) is None  # before start: the 1 MiB default
    await writer.start()
    outcomes = await writer.put_all([fits, too_big])
    assert outcomes[0].accepted
    assert outcomes[1].reason == "record_too_large"
    assert fake.sent() == [(fits.data, "k")]


async def test_a_rejected_record_does_not_block_its_key() -> None:
    fake = FakeTransport()
    records = [record("a", 1), Record(b"x" * (2 * MIB), "a"), record("a", 3)]
    outcomes = await KinesisWriter("s", fake, FAST).put_all(records)
    assert [o.accepted for o in outcomes] == [True, False, True]
    assert [data for data, _ in fake.accepted] == [b"a#1", b"a#3"]
    assert_per_key_order(records, fake)


# -- retries and order ---------------------------------------------------------------------


async def test_only_failed_records_are_retried() -> None:
    records = [record(f"k{i}", 0) for i in range(5)]
    fake = FakeTransport(record_errors={b"k1#0": [THROTTLED], b"k3#0": [INTERNAL, THROTTLED]})
    observer = RecordingObserver()
    outcomes = await KinesisWriter("s", fake, FAST, observer).put_all(records)
    assert all(o.accepted for o in outcomes)
    assert [[d for d, _ in c.records] for c in fake.calls] == [
        [b"k0#0", b"k1#0", b"k2#0", b"k3#0", b"k4#0"],
        [b"k1#0", b"k3#0"],
        [b"k3#0"],
    ]
    failures = sum((r.failed_by_code for r in observer.reports), Counter[str]())
    assert failures == Counter({THROTTLED: 2, INTERNAL: 1})
    assert [r.retried for r in observer.reports] == [0, 2, 1]


async def test_each_call_is_reported_with_its_shards_codes_and_retries() -> None:
    observer = RecordingObserver()
    fake = FakeTransport(record_errors={b"b#0": [THROTTLED]})
    await KinesisWriter("s", fake, FAST, observer).put_all([record("a", 0), record("b", 0)])
    first, second = observer.reports
    assert (first.records, first.accepted, first.failed, first.retried) == (2, 1, 1, 0)
    assert first.size == len(b"a#0") + 1 + len(b"b#0") + 1
    assert first.failed_by_code == Counter({THROTTLED: 1})
    assert sum(first.throttled_by_shard.values()) == 1
    assert (second.records, second.accepted, second.failed, second.retried) == (1, 1, 0, 1)
    assert observer.started == 2
    assert observer.pending_seen[0] == 2
    assert observer.pending_seen[-1] == 0


async def test_a_failed_call_is_reported_with_its_error_code() -> None:
    observer = RecordingObserver()
    fake = FakeTransport(call_errors=[TransportError("InternalFailure", "boom", fatal=False)])
    await KinesisWriter("s", fake, FAST, observer).put_all([record("a", 0), record("b", 0)])
    first, second = observer.reports
    assert first.call_error == "InternalFailure"
    assert first.failed_by_code == Counter({"InternalFailure": 2})
    assert (second.accepted, second.retried) == (2, 2)


async def test_per_key_order_when_the_first_record_fails_several_times() -> None:
    records = [record("a", n) for n in range(3)] + [record("b", n) for n in range(5)]
    fake = FakeTransport(record_errors={b"a#0": [THROTTLED, INTERNAL, THROTTLED, THROTTLED]})
    outcomes = await KinesisWriter("s", fake, FAST).put_all(records)
    assert all(o.accepted for o in outcomes)
    assert_per_key_order(records, fake)
    accepted = [data for data, _ in fake.accepted]
    assert [d for d in accepted if d.startswith(b"a")] == [b"a#0", b"a#1", b"a#2"]
    assert [d for d in accepted if d.startswith(b"b")] == [b"b#0", b"b#1", b"b#2", b"b#3", b"b#4"]
    # a#1 was never sent before a#0 was accepted (in the fifth call).
    first_a0_accepted = next(i for i, c in enumerate(fake.calls) if (b"a#0", "a") in c.accepted)
    assert first_a0_accepted == 4
    for call in fake.calls[: first_a0_accepted + 1]:
        assert all(data != b"a#1" for data, _ in call.records)
    # b is not held back: all of it accepted by then.
    b_done = max(
        i for i, c in enumerate(fake.calls) for data, _ in c.accepted if data.startswith(b"b")
    )
    assert b_done <= first_a0_accepted


async def test_no_call_holds_two_records_of_one_key() -> None:
    records = [record(k, n) for n in range(4) for k in "abc"]
    fake = FakeTransport()
    await KinesisWriter("s", fake, FAST).put_all(records)
    assert_per_key_order(records, fake)
    assert len(fake.accepted) == len(records)


async def test_backoff_grows_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("worker.kinesis._writer.asyncio.sleep", fake_sleep)
    monkeypatch.setattr("worker.kinesis._writer.random.uniform", lambda _a, b: b)
    fake = FakeTransport(record_errors={b"a#0": [THROTTLED] * 8})
    config = WriterConfig(backoff_base_s=0.05, backoff_max_s=1.0)
    await KinesisWriter("s", fake, config).put_all([record("a", 0)])
    assert sleeps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]


# -- whole-call errors ---------------------------------------------------------------------


async def test_a_transient_call_error_is_retried() -> None:
    fake = FakeTransport(call_errors=[TransportError("ThrottlingException", "slow", fatal=False)])
    records = [record("a", 0), record("b", 0)]
    outcomes = await KinesisWriter("s", fake, FAST).put_all(records)
    assert all(o.accepted for o in outcomes)
    assert len(fake.calls) == 2
    assert fake.calls[0].raised is not None
    assert fake.calls[1].records == fake.calls[0].records


async def test_a_fatal_error_waits_and_retries_unwritable_meanwhile() -> None:
    fatal = TransportError("ResourceNotFoundException", "no such stream", fatal=True)
    writable_at_call: list[bool] = []
    observer = RecordingObserver()
    fake = FakeTransport(call_errors=[fatal, fatal])
    writer = KinesisWriter(
        "s", fake, WriterConfig(backoff_max_s=0.0, fatal_retry_s=0.001), observer
    )
    fake.on_call = lambda _batch: writable_at_call.append(writer.writable)
    await writer.start()
    assert writer.writable is True
    outcomes = await writer.put_all([record("a", 0)])
    assert outcomes == [Outcome(accepted=True)]
    assert writable_at_call == [True, False, False]
    assert writer.writable is True
    assert observer.writable == [(True, None), (False, fatal), (True, None)]


async def test_writable_is_false_while_waiting_after_a_fatal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[float, bool]] = []
    real_sleep = asyncio.sleep
    fake = FakeTransport(
        call_errors=[TransportError("AccessDeniedException", "denied", fatal=True)]
    )
    writer = KinesisWriter("s", fake, WriterConfig(fatal_retry_s=10.0))

    async def fake_sleep(delay: float) -> None:
        seen.append((delay, writer.writable))
        await real_sleep(0)

    monkeypatch.setattr("worker.kinesis._writer.asyncio.sleep", fake_sleep)
    await writer.put_all([record("a", 0)])
    assert seen == [(10.0, False)]
    assert writer.writable is True


async def test_validation_exception_finds_the_culprit_alone() -> None:
    records = [record("a", 0), record("b", 0), record("c", 0), record("a", 1)]
    fake = FakeTransport(invalid={b"b#0"})
    outcomes = await KinesisWriter("s", fake, FAST).put_all(records)
    assert [o.accepted for o in outcomes] == [True, False, True, True]
    assert outcomes[1].reason == "rejected_by_kinesis"
    assert outcomes[1].detail is not None
    assert "ValidationException" in outcomes[1].detail
    assert [c.records for c in fake.calls[:1]] == [[(b"a#0", "a"), (b"b#0", "b"), (b"c#0", "c")]]
    # Then one call per record of the failed call.
    assert [c.records for c in fake.calls[1:4]] == [
        [(b"a#0", "a")],
        [(b"b#0", "b")],
        [(b"c#0", "c")],
    ]
    assert (b"a#1", "a") in fake.accepted
    assert_per_key_order(records, fake)


async def test_validation_exception_on_a_single_record_rejects_it() -> None:
    fake = FakeTransport(invalid={b"a#0"})
    outcomes = await KinesisWriter("s", fake, FAST).put_all([record("a", 0), record("a", 1)])
    assert outcomes[0] == Outcome(False, Rejection.REJECTED_BY_KINESIS, outcomes[0].detail)
    assert outcomes[1].accepted
    assert len(fake.calls) == 2


# -- property ----------------------------------------------------------------------------------


@dataclass
class Scenario:
    keys: list[str]
    failures: list[list[str]]
    call_errors: list[TransportError | None]
    max_batch_records: int


ERRORS = st.sampled_from([THROTTLED, INTERNAL])
CALL_ERRORS = st.one_of(
    st.none(),
    st.just(TransportError("ThrottlingException", "slow", fatal=False)),
    st.just(TransportError("ServiceUnavailable", "down", fatal=False)),
    st.just(TransportError("AccessDeniedException", "denied", fatal=True)),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    keys = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=30))
    failures = [draw(st.lists(ERRORS, max_size=3)) for _ in keys]
    call_errors = draw(st.lists(CALL_ERRORS, max_size=4))
    return Scenario(keys, failures, call_errors, draw(st.integers(1, 4)))


def scenario_records(scenario: Scenario) -> tuple[list[Record], FakeTransport]:
    """The scenario's records (each key numbered from 1) on a transport failing them."""
    counters: dict[str, int] = {}
    records = []
    for key in scenario.keys:
        counters[key] = counters.get(key, 0) + 1
        records.append(record(key, counters[key]))
    fake = FakeTransport(
        record_errors={r.data: f for r, f in zip(records, scenario.failures, strict=True)},
        call_errors=scenario.call_errors,
    )
    return records, fake


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_record_is_accepted_in_key_order(scenario: Scenario) -> None:
    records, fake = scenario_records(scenario)
    config = WriterConfig(
        max_batch_records=scenario.max_batch_records,
        backoff_base_s=0.0,
        backoff_max_s=0.0,
        fatal_retry_s=0.0,
    )
    writer = KinesisWriter("s", fake, config)
    outcomes = asyncio.run(writer.put_all(records))
    assert outcomes == [Outcome(accepted=True)] * len(records)
    assert sorted(data for data, _ in fake.accepted) == sorted(r.data for r in records)
    assert_per_key_order(records, fake)
    assert writer.writable or not records


# -- patience: records deferred for the caller to park (worker.parking) -------------------


class FakeClock:
    """time.monotonic of the writer, moved only by its sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The writer's clock and sleeps faked: each sleep moves the clock by its delay;
    every backoff is its cap (1 s with ``SLOW``)."""
    fake = FakeClock()
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        fake.sleeps.append(delay)
        fake.now += delay
        await real_sleep(0)

    monkeypatch.setattr("worker.kinesis._writer.time", fake)
    monkeypatch.setattr("worker.kinesis._writer.asyncio.sleep", fake_sleep)
    monkeypatch.setattr("worker.kinesis._writer.random.uniform", lambda _a, b: b)
    return fake


# Every retry of a failed wave waits 1 s (the cap), a refusing stream 10 s.
SLOW = WriterConfig(backoff_base_s=1.0, backoff_max_s=1.0, fatal_retry_s=10.0)
GONE = TransportError("ResourceNotFoundException", "Stream s not found", fatal=True)


def deferred_keys(records: Sequence[Record], outcomes: Sequence[Outcome]) -> dict[str, list[bool]]:
    """For each key, whether each of its records was deferred, in order."""
    found: dict[str, list[bool]] = {}
    for r, o in zip(records, outcomes, strict=True):
        found.setdefault(r.partition_key, []).append(o.deferred)
    return found


async def test_a_refusing_stream_defers_every_record_not_accepted_at_once(
    clock: FakeClock,
) -> None:
    records = [record("a", 0), record("b", 0), record("a", 1), record("b", 1), record("a", 2)]
    fake = FakeTransport(call_errors=[None, GONE])
    writer = KinesisWriter("s", fake, SLOW)
    outcomes = await writer.put_all(records, patience_s=3600.0)
    # The first wave was accepted, the second refused: no retry, no wait.
    assert [o.accepted for o in outcomes] == [True, True, False, False, False]
    assert [o.deferred for o in outcomes] == [False, False, True, True, True]
    assert len(fake.calls) == 2
    assert clock.sleeps == []
    assert fake.accepted == [(b"a#0", "a"), (b"b#0", "b")]
    for outcome in outcomes[2:]:
        assert outcome.reason is None
        assert outcome.detail == "ResourceNotFoundException: Stream s not found"
    assert writer.last_error == "ResourceNotFoundException: Stream s not found"
    assert writer.writable is False


async def test_deferred_records_are_the_tail_of_each_keys_records(clock: FakeClock) -> None:
    # One record per call: the calls of a wave are answered one by one.
    config = WriterConfig(max_batch_records=1, backoff_base_s=1.0, backoff_max_s=1.0)
    records = [record("a", 0), record("b", 0), record("c", 0), record("a", 1), record("c", 1)]
    fake = FakeTransport(call_errors=[None, GONE, None])
    outcomes = await KinesisWriter("s", fake, config).put_all(records, patience_s=0.0)
    assert deferred_keys(records, outcomes) == {
        "a": [False, True],
        "b": [True],
        "c": [False, True],
    }
    assert sorted(fake.accepted) == [(b"a#0", "a"), (b"c#0", "c")]
    assert_per_key_order(records, fake)


async def test_a_record_refused_for_good_keeps_its_reason_among_deferred_ones(
    clock: FakeClock,
) -> None:
    too_big = Record(b"x" * MIB, "b")
    fake = FakeTransport(call_errors=[GONE])
    outcomes = await KinesisWriter("s", fake, SLOW).put_all(
        [record("a", 0), too_big, record("b", 1)], patience_s=30.0
    )
    assert [o.deferred for o in outcomes] == [True, False, True]
    assert outcomes[1].reason == "record_too_large"


async def test_a_failing_stream_defers_after_its_patience_without_progress(
    clock: FakeClock,
) -> None:
    fake = FakeTransport(record_errors={b"a#0": [THROTTLED] * 20})
    writer = KinesisWriter("s", fake, SLOW)
    outcomes = await writer.put_all([record("a", 0), record("a", 1)], patience_s=3.5)
    # Waves at 0, 1, 2, 3 s wait; the one at 4 s is past 3.5 s without progress.
    assert clock.sleeps == [1.0, 1.0, 1.0, 1.0]
    assert len(fake.calls) == 5
    assert [o.deferred for o in outcomes] == [True, True]
    assert outcomes[0].detail == f"{THROTTLED}: try again"
    assert writer.last_error == f"{THROTTLED}: try again"
    assert writer.writable is True  # not refused: slow


async def test_patience_counts_from_the_last_record_accepted(clock: FakeClock) -> None:
    records = [record("a", 0)] + [record("b", n) for n in range(6)]
    fake = FakeTransport(record_errors={b"a#0": [THROTTLED] * 20})
    outcomes = await KinesisWriter("s", fake, SLOW).put_all(records, patience_s=3.5)
    # b moves a record a wave until 5 s; a#0 is deferred 4 s after that, not before.
    assert [o.accepted for o in outcomes] == [False] + [True] * 6
    assert outcomes[0].deferred
    assert clock.now == 9.0
    assert len(fake.calls) == 10


async def test_patience_zero_gives_up_after_the_first_failed_wave(clock: FakeClock) -> None:
    records = [record("a", 0), record("b", 0), record("a", 1)]
    fake = FakeTransport(record_errors={b"a#0": [INTERNAL]})
    outcomes = await KinesisWriter("s", fake, SLOW).put_all(records, patience_s=0.0)
    assert [(o.accepted, o.deferred) for o in outcomes] == [
        (False, True),
        (True, False),
        (False, True),
    ]
    assert len(fake.calls) == 1
    assert clock.sleeps == []


async def test_a_wave_without_failure_is_never_deferred(clock: FakeClock) -> None:
    records = [record("a", n) for n in range(4)]
    fake = FakeTransport()
    outcomes = await KinesisWriter("s", fake, SLOW).put_all(records, patience_s=0.0)
    assert outcomes == [Outcome(accepted=True)] * 4
    assert len(fake.calls) == 4


@pytest.mark.parametrize(
    "fake",
    [
        pytest.param(lambda: FakeTransport(call_errors=[GONE, GONE]), id="refusing"),
        pytest.param(
            lambda: FakeTransport(record_errors={b"a#0": [THROTTLED] * 8}), id="throttled"
        ),
    ],
)
async def test_without_patience_every_record_is_retried_until_accepted(
    clock: FakeClock, fake: Callable[[], FakeTransport]
) -> None:
    transport = fake()
    records = [record("a", 0), record("b", 0), record("a", 1)]
    outcomes = await KinesisWriter("s", transport, SLOW).put_all(records)
    assert outcomes == [Outcome(accepted=True)] * 3
    assert not any(o.deferred for o in outcomes)
    assert clock.now >= 8.0  # it waited as long as it took
    assert_per_key_order(records, transport)


async def test_a_record_refused_with_a_fatal_code_defers_at_once(clock: FakeClock) -> None:
    fake = FakeTransport(record_errors={b"a#0": ["KMSDisabledException"]})
    writer = KinesisWriter("s", fake, SLOW)
    outcomes = await writer.put_all([record("a", 0), record("b", 0)], patience_s=3600.0)
    assert [(o.accepted, o.deferred) for o in outcomes] == [(False, True), (True, False)]
    assert clock.sleeps == []
    assert writer.last_error is not None
    assert writer.last_error.startswith("KMSDisabledException")


async def test_last_error_names_the_code_of_a_failed_call() -> None:
    fake = FakeTransport(call_errors=[TransportError(INTERNAL, "boom", fatal=False)])
    writer = KinesisWriter("s", fake, FAST)
    assert writer.last_error is None
    await writer.put_all([record("a", 0)])
    assert writer.last_error == f"{INTERNAL}: boom"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_with_patience_each_key_is_accepted_then_deferred_in_order(scenario: Scenario) -> None:
    records, fake = scenario_records(scenario)
    config = WriterConfig(
        max_batch_records=scenario.max_batch_records, backoff_base_s=0.0, backoff_max_s=0.0
    )
    outcomes = asyncio.run(KinesisWriter("s", fake, config).put_all(records, patience_s=0.0))
    accepted = {data for data, _ in fake.accepted}
    for r, o in zip(records, outcomes, strict=True):
        assert o.accepted != o.deferred
        assert (r.data in accepted) == o.accepted
    for key, flags in deferred_keys(records, outcomes).items():
        assert flags == sorted(flags), f"{key}: a record deferred before an accepted one"
    assert_per_key_order(records, fake)
