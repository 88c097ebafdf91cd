"""Batches: a poison event is isolated and dead-lettered, outages are retried,
memory is shared, a stall shows (worker/batching.py, worker/budget.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from faust.exceptions import NotReady, ProducerSendError

from worker.batching import Background, Backgrounds, BatchRunner, EventBatches, is_outage
from worker.budget import MemoryBudget
from worker.pipeline import InputMessage


def message(offset: int) -> InputMessage:
    return InputMessage("segment-qualifications", 0, offset, b"p", b"{}")


class Poisoned(Exception):
    pass


class FakeProcessor:
    """Fails any batch holding a poison offset; fails the first ``outages`` calls."""

    def __init__(
        self,
        poison: Collection[int] = (),
        outages: int = 0,
        outage: Exception | None = None,
    ) -> None:
        self.poison = set(poison)
        self.outages = outages
        self.outage = outage or KafkaConnectionError()
        self.calls: list[list[int]] = []
        self.applied: list[int] = []
        self.dead: list[tuple[int, str, str]] = []

    async def process(self, messages: Sequence[InputMessage]) -> None:
        offsets = [m.offset for m in messages]
        self.calls.append(offsets)
        if self.outages:
            self.outages -= 1
            raise self.outage
        if self.poison & set(offsets):
            raise Poisoned("bad")
        self.applied += offsets

    async def dead_letter(self, message: InputMessage, reason: str, detail: str) -> None:
        self.dead.append((message.offset, reason, detail))


def runner(processor: FakeProcessor) -> BatchRunner:
    return BatchRunner(processor, 100, 0.01, MemoryBudget(1 << 20), backoff_max_s=0.0)


async def test_a_poison_event_is_isolated_and_the_rest_applied_in_order() -> None:
    processor = FakeProcessor(poison={13, 40})
    await runner(processor).process_until_done([message(i) for i in range(64)])
    assert processor.applied == [i for i in range(64) if i not in (13, 40)]
    assert [(o, r) for o, r, _ in processor.dead] == [
        (13, "internal_error"),
        (40, "internal_error"),
    ]
    assert "Poisoned" in processor.dead[0][2]
    # Halving: a few dozen attempts, not one per event.
    assert len(processor.calls) < 30


async def test_a_poison_event_alone_is_dead_lettered() -> None:
    processor = FakeProcessor(poison={7})
    await runner(processor).process_until_done([message(7)])
    assert processor.applied == []
    assert [o for o, _, _ in processor.dead] == [7]


@pytest.mark.parametrize(
    "outage",
    [
        KafkaConnectionError(),
        KafkaTimeoutError(),
        TopicAuthorizationFailedError(),
        TimeoutError(),
        ConnectionResetError(),
        OSError(28, "No space left on device"),
        ProducerSendError("Error while sending"),
    ],
    ids=type,
)
async def test_outages_are_retried_whole_and_never_dead_lettered(outage: Exception) -> None:
    processor = FakeProcessor(outages=5, outage=outage)
    batch = [message(i) for i in range(10)]
    await runner(processor).process_until_done(batch)
    assert processor.calls == [list(range(10))] * 6
    assert processor.applied == list(range(10))
    assert processor.dead == []


def test_what_counts_as_an_outage() -> None:
    assert is_outage(KafkaConnectionError())
    assert is_outage(MessageSizeTooLargeError())  # Kafka's refusal: never an event's fault
    assert is_outage(TimeoutError())
    assert is_outage(OSError(28, "No space left on device"))  # RocksDB on a full disk
    assert is_outage(ProducerSendError())  # Faust wraps Kafka's errors in it
    assert is_outage(NotReady())
    assert not is_outage(ValueError())
    assert not is_outage(RecursionError())
    assert not is_outage(KeyError("x"))


def test_an_outage_is_found_anywhere_in_the_chain_of_causes() -> None:
    def raised(exc: Exception, cause: Exception | None = None) -> Exception:
        try:
            raise exc from cause
        except Exception as caught:
            return caught

    assert is_outage(raised(RuntimeError("wrapped"), KafkaConnectionError()))
    suppressed = ValueError("raised from None while handling an OSError")
    suppressed.__context__ = OSError(5, "I/O error")
    suppressed.__suppress_context__ = True
    assert not is_outage(suppressed)  # a bug of ours, not the disk's
    looped = ValueError("a")
    looped.__context__ = ValueError("b")
    looped.__context__.__context__ = looped
    assert not is_outage(looped)


async def test_a_dead_letter_that_cannot_be_written_is_retried() -> None:
    processor = FakeProcessor(poison={1})
    failures = [KafkaConnectionError(), KafkaConnectionError()]
    dead_letter = processor.dead_letter

    async def flaky(message: InputMessage, reason: str, detail: str) -> None:
        if failures:
            raise failures.pop()
        await dead_letter(message, reason, detail)

    processor.dead_letter = flaky  # type: ignore[method-assign]
    await runner(processor).process_until_done([message(1)])
    assert [o for o, _, _ in processor.dead] == [1]


class Event:
    def __init__(self, offset: int, size: int) -> None:
        self.message = InputMessage("t", 0, offset, None, b"x" * size)


async def test_input_waits_for_room_in_the_shared_budget() -> None:
    memory = MemoryBudget(200)
    batches = EventBatches(10, 0.01, memory)
    await batches.put(Event(0, 60))
    memory.take_output(500)  # records built by the batch in progress: their own half
    assert memory.over
    await asyncio.wait_for(batches.put(Event(1, 40)), 1)
    blocked = asyncio.ensure_future(batches.put(Event(2, 20)))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # the input half is full
    await batches.release([Event(0, 60)])
    await asyncio.wait_for(blocked, 1)
    assert memory.input == 60
    assert memory.used == 560


async def test_one_event_larger_than_the_budget_still_fits_alone() -> None:
    memory = MemoryBudget(100)
    batches = EventBatches(10, 0.01, memory)
    await asyncio.wait_for(batches.put(Event(0, 500)), 1)
    assert memory.input == 500


async def test_a_stall_is_measured_only_while_events_wait() -> None:
    processor = FakeProcessor(outages=10**9)
    run = BatchRunner(processor, 10, 0.001, MemoryBudget(1 << 20), backoff_max_s=0.01)
    assert run.stalled_s() == 0.0

    class Stream:
        def noack(self) -> Stream:
            return self

        async def events(self):  # type: ignore[no-untyped-def]
            yield Event(0, 10)
            await asyncio.sleep(3600)

        async def ack(self, event: object) -> None:
            pass

    task = asyncio.ensure_future(run.run(Stream()))
    await asyncio.sleep(0.3)
    assert run.stalled_s() >= 0.25
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failure_of_the_batch_loop_stops_the_runner_even_while_input_waits() -> None:
    # A failure outside a batch (here: acknowledging) left events unacknowledged
    # forever; the runner formerly went on taking events, or waited for room
    # that never came. It must raise, so that the worker stops and restarts.
    memory = MemoryBudget(100)
    run = BatchRunner(FakeProcessor(), 10, 0.001, memory, backoff_max_s=0.0)

    class Broken(Exception):
        pass

    class Stream:
        def noack(self) -> Stream:
            return self

        async def events(self):  # type: ignore[no-untyped-def]
            for offset in range(10**6):
                yield Event(offset, 60)  # the second waits for the first's bytes

        async def ack(self, event: object) -> None:
            raise Broken

    with pytest.raises(Broken):
        await asyncio.wait_for(run.run(Stream()), 5)


async def test_a_batch_lingers_from_its_first_event_s_arrival() -> None:
    """An event that already waited behind the previous batch does not wait again."""
    batches = EventBatches(10, 0.3, MemoryBudget(1 << 20))
    await batches.put(Event(0, 10))
    await asyncio.sleep(0.3)  # the previous batch was being processed meanwhile
    batch = await asyncio.wait_for(batches.next_batch(), 0.2)
    assert [e.message.offset for e in batch] == [0]


async def test_next_batch_waits_at_most_what_it_is_given() -> None:
    batches = EventBatches(10, 0.001, MemoryBudget(1 << 20))
    assert await asyncio.wait_for(batches.next_batch(0.05), 1) == []
    assert await batches.next_batch(0) == []
    await batches.put(Event(7, 10))
    # Queued events are taken even with no time to wait.
    assert [e.message.offset for e in await batches.next_batch(0)] == [7]


async def test_background_work_runs_between_batches_never_during_one() -> None:
    """worker.backfill's slices: due ones run before the next batch, and a batch
    is prepared (a new assignment planned) before it is processed."""
    trace: list[str] = []

    class Processor(FakeProcessor):
        async def process(self, messages: Sequence[InputMessage]) -> None:
            trace.append(f"batch {[m.offset for m in messages]}")
            await asyncio.sleep(0.02)
            trace.append("batch done")

    class Background:
        def __init__(self) -> None:
            self.runs = 0

        def due_in(self) -> float:
            return 0.0 if self.runs < 3 else 1.0

        async def run(self) -> None:
            self.runs += 1
            trace.append("slice")

        async def prepare(self) -> None:
            trace.append("prepare")

    class Stream:
        def noack(self) -> Stream:
            return self

        async def events(self):  # type: ignore[no-untyped-def]
            for offset in range(2):
                yield Event(offset, 10)
                await asyncio.sleep(0.05)
            await asyncio.sleep(3600)

        async def ack(self, event: object) -> None:
            trace.append("ack")

    background = Background()
    run = BatchRunner(Processor(), 10, 0.001, MemoryBudget(1 << 20), background=background)
    task = asyncio.ensure_future(run.run(Stream()))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert background.runs == 3
    # Nothing between "batch" and "batch done"; each batch prepared first.
    for index, step in enumerate(trace):
        if step.startswith("batch ["):
            assert trace[index - 1] == "prepare"
            assert trace[index + 1] == "batch done"


class Work:
    """A background work due in ``due`` seconds; what it does goes to ``trace``."""

    def __init__(self, name: str, due: float, trace: list[str]) -> None:
        self.name = name
        self.due = due
        self.trace = trace

    def due_in(self) -> float:
        return self.due

    async def run(self) -> None:
        self.trace.append(f"run {self.name}")

    async def prepare(self) -> None:
        self.trace.append(f"prepare {self.name}")


def check_work_is_background(work: Work, works: Backgrounds) -> tuple[Background, Background]:
    return work, works  # mypy checks them against the protocol


async def test_backgrounds_run_only_the_due_works_in_order() -> None:
    trace: list[str] = []
    works = Backgrounds(
        Work("parking", 0.0, trace), Work("backfill", 0.5, trace), Work("c", -1.0, trace)
    )
    await works.run()
    assert trace == ["run parking", "run c"]


async def test_backgrounds_prepare_every_work_in_order() -> None:
    trace: list[str] = []
    works = Backgrounds(Work("parking", 5.0, trace), Work("backfill", 0.0, trace))
    await works.prepare()
    assert trace == ["prepare parking", "prepare backfill"]


def test_backgrounds_are_due_when_the_first_of_them_is() -> None:
    trace: list[str] = []
    assert Backgrounds(Work("a", 1.0, trace), Work("b", 0.25, trace)).due_in() == 0.25
    assert Backgrounds(Work("a", 0.0, trace), Work("b", 0.25, trace)).due_in() == 0.0
    assert Backgrounds(Work("a", 3.0, trace)).due_in() == 3.0
    assert trace == []


async def test_backgrounds_ask_each_work_when_its_turn_comes() -> None:
    """A work made due by the one before it runs in the same round (parking reads a
    new assignment, then the backfill plans it)."""
    trace: list[str] = []
    second = Work("backfill", 1.0, trace)

    class First(Work):
        async def run(self) -> None:
            await super().run()
            second.due = 0.0

    await Backgrounds(First("parking", 0.0, trace), second).run()
    assert trace == ["run parking", "run backfill"]


async def test_backgrounds_between_batches() -> None:
    trace: list[str] = []

    class Processor(FakeProcessor):
        async def process(self, messages: Sequence[InputMessage]) -> None:
            trace.append("batch")

    class Once(Work):
        async def run(self) -> None:
            await super().run()
            self.due = 3600.0

    class Stream:
        def noack(self) -> Stream:
            return self

        async def events(self):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.02)
            yield Event(0, 10)
            await asyncio.sleep(3600)

        async def ack(self, event: object) -> None:
            trace.append("ack")

    works = Backgrounds(Once("parking", 0.0, trace), Work("backfill", 3600.0, trace))
    run = BatchRunner(Processor(), 10, 0.001, MemoryBudget(1 << 20), background=works)
    task = asyncio.ensure_future(run.run(Stream()))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert trace == ["run parking", "prepare parking", "prepare backfill", "batch", "ack"]
