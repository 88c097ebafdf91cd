"""Events from the agent's stream, processed a batch at a time, acknowledged after.

An event is acknowledged (its offset becomes committable) only once its batch
is done. A batch that fails is never skipped: a failure of Kafka or the network
(``is_outage``) is retried with the whole batch; any other failure splits
the batch until the event that causes it is alone, and that event is
dead-lettered, so one poison event cannot hold its partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka.errors import KafkaError
from faust.exceptions import FaustError

from worker import metrics
from worker.budget import MemoryBudget
from worker.errors import RetryLater
from worker.pipeline import InputMessage
from worker.vocabulary import DeadLetterReason

log = logging.getLogger(__name__)


class Background(Protocol):
    """Work the loop does between batches (worker.backfill)."""

    def due_in(self) -> float:
        """Seconds until ``run`` is due (0: now)."""

    async def run(self) -> None: ...

    async def prepare(self) -> None:
        """Runs before each batch."""


class Backgrounds:
    """Several works between batches, in the order given (each one's prepare, due
    ones' run)."""

    def __init__(self, *works: Background) -> None:
        self._works = works

    def due_in(self) -> float:
        return min(work.due_in() for work in self._works)

    async def run(self) -> None:
        for work in self._works:
            if work.due_in() <= 0:
                await work.run()

    async def prepare(self) -> None:
        for work in self._works:
            await work.prepare()


class Processor(Protocol):
    async def process(self, messages: Sequence[InputMessage]) -> Any: ...

    async def dead_letter(
        self, message: InputMessage, reason: DeadLetterReason, detail: str
    ) -> None: ...


def is_outage(exc: BaseException) -> bool:
    """Whether a failure is the infrastructure's rather than the events': the one
    place that decides. Such a batch is retried as it is until it goes through,
    and none of its events is dead-lettered.

    Every Kafka error counts, retriable or not: a refused write (authorization,
    a topic deleted) is an outage to fix, never the fault of one event, and the
    dead letters that could be too large for Kafka are bounded by construction
    (worker.deadletters). So do Faust's errors (it wraps Kafka's in
    ``ProducerSendError``; ``NotReady`` while it starts or stops) and the
    operating system's (a full disk under RocksDB, a reset connection, a
    timeout), anywhere in the chain of causes. The events are handled one by
    one inside the processor, so what escapes it after they were applied
    (delivery, dead letters, table writes) is retried, not blamed on an event
    that may already have been sent. Kinesis errors never reach here: the
    writer retries them itself.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, (KafkaError, FaustError, OSError, RetryLater)):
            return True
        seen.add(id(cause))
        if cause.__cause__ is not None:
            cause = cause.__cause__
        else:
            cause = None if cause.__suppress_context__ else cause.__context__
    return False


# Retries of work that failed back off up to this long (worker.backfill, worker.parking).
BACKOFF_MAX_S = 30.0


def backoff_s(failures: int, cap_s: float = BACKOFF_MAX_S) -> float:
    """How long to wait after ``failures`` failures in a row: 1 s, 2 s, 4 s... to ``cap_s``."""
    return min(cap_s, 0.5 * 2.0 ** min(failures, 6))


def log_failure(what: str, exc: BaseException, retry_s: float) -> None:
    """A failure of work between batches (backfill, parking), retried later: an
    outage is a warning; anything else an error, with its traceback (without
    the exception's message, which may quote values)."""
    if is_outage(exc):
        log.warning("%s failed (%s: %s); retry in %.1fs", what, type(exc).__name__, exc, retry_s)
    else:
        log.error(
            "%s failed (%s); retry in %.1fs",
            what,
            type(exc).__name__,
            retry_s,
            extra={"traceback": "".join(traceback.format_tb(exc.__traceback__))},
        )


class EventBatches:
    """Events from the stream, handed out in batches of at most ``max_events``.

    Faust's own ``take_events`` is not used: in faust-streaming 0.15.3 it
    acknowledges a whole batch when the loop body is cancelled (shutdown), and
    in our kill/restart test some events between two of its batches never
    reached the agent while their offsets were committed: records were lost.
    With a manual-ack stream, an event is acknowledged only after its batch.

    Back-pressure: the bytes of events taken and not yet done (queued or in
    the batch being put) count against the input half of the memory budget;
    when it is full, ``put`` waits, so the stream stops being read until a
    batch is done. The
    queue also holds at most ``max_events`` events.
    """

    def __init__(self, max_events: int, linger_s: float, memory: MemoryBudget) -> None:
        self._max = max_events
        self._linger = linger_s
        # (event, when it was taken): a batch lingers from its first event's arrival.
        self._queue: asyncio.Queue[tuple[Any, float]] = asyncio.Queue(maxsize=max_events)
        self._memory = memory
        self.buffered_events = 0
        self.last_event_at = 0.0
        self.idle_since = 0.0  # when the buffer last went from empty to not empty

    @staticmethod
    def size(event: Any) -> int:
        message = event.message
        return len(message.key or b"") + len(message.value or b"")

    async def release(self, events: Sequence[Any]) -> None:
        """The events are done (or abandoned): their bytes are free again."""
        self.buffered_events -= len(events)
        await self._memory.release_input(sum(self.size(e) for e in events))
        metrics.BUFFERED_EVENTS.set(self.buffered_events)

    async def put(self, event: Any) -> None:
        await self._memory.reserve_input(self.size(event))
        now = asyncio.get_running_loop().time()
        if self.buffered_events == 0:
            self.idle_since = now
        self.buffered_events += 1
        self.last_event_at = now
        metrics.BUFFERED_EVENTS.set(self.buffered_events)
        await self._queue.put((event, now))

    async def next_batch(self, wait_s: float | None = None) -> list[Any]:
        """Waits for an event (at most ``wait_s``: none is an empty batch), then
        takes more until ``max_events`` or until the first has waited
        ``linger_s`` since it was taken from the stream (it may have waited
        already, behind the previous batch)."""
        if not self._queue.empty():
            first, since = self._queue.get_nowait()
        elif wait_s is None:
            first, since = await self._queue.get()
        elif wait_s <= 0:
            return []
        else:
            try:
                first, since = await asyncio.wait_for(self._queue.get(), wait_s)
            except TimeoutError:
                return []
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = since + self._linger
        while len(batch) < self._max:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait()[0])
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append((await asyncio.wait_for(self._queue.get(), remaining))[0])
            except TimeoutError:
                break
        return batch


class BatchRunner:
    """Feeds the agent's events to the processor in batches; acks after each batch."""

    def __init__(
        self,
        processor: Processor,
        max_events: int,
        linger_s: float,
        memory: MemoryBudget,
        backoff_max_s: float = 30.0,
        background: Background | None = None,
    ) -> None:
        self._processor = processor
        self._background = background
        self._batches = EventBatches(max_events, linger_s, memory)
        self._backoff_max_s = backoff_max_s
        self._last_done = 0.0

    def activity(self) -> tuple[float, int]:
        """When the last event was taken, and how many are taken and not done."""
        return self._batches.last_event_at, self._batches.buffered_events

    def stalled_s(self) -> float:
        """How long events have waited with no batch completed (0 when none wait)."""
        if self._batches.buffered_events == 0:
            return 0.0
        since = max(self._last_done, self._batches.idle_since)
        return time.monotonic() - since  # the clock of asyncio's loop.time()

    async def run(self, stream: Any) -> None:
        """Takes the stream's events until cancelled; raises what stops the batches.

        A failure of the batch loop itself (not of a batch: those are retried
        or split) leaves taken events unacknowledged, and their offsets could
        never be committed again in this process: it is raised at once, even
        while ``put`` waits for room, and the agent's crashing supervisor
        stops the worker, which restarts from the committed offsets.
        """
        manual = stream.noack()  # acks are ours
        self._last_done = asyncio.get_running_loop().time()
        processing = asyncio.ensure_future(self._process(manual))
        taking = asyncio.current_task()

        def stop_taking(done: asyncio.Future[None]) -> None:
            if taking is not None and not done.cancelled() and done.exception() is not None:
                taking.cancel()

        processing.add_done_callback(stop_taking)
        try:
            async for event in manual.events():
                await self._batches.put(event)
        except asyncio.CancelledError:
            if processing.done() and not processing.cancelled():
                failure = processing.exception()
                if failure is not None:
                    log.critical("the batch loop failed (%s); stopping", type(failure).__name__)
                    raise failure from None
            raise
        finally:
            processing.remove_done_callback(stop_taking)
            processing.cancel()

    async def _process(self, stream: Any) -> None:
        background = self._background
        while True:
            if background is None:
                events = await self._batches.next_batch()
            else:
                # Between two batches, never during one: see worker.backfill.
                wait_s = background.due_in()
                if wait_s <= 0:
                    await background.run()
                    wait_s = background.due_in()
                events = await self._batches.next_batch(wait_s)
                if not events:
                    continue
                await background.prepare()
            messages = [
                InputMessage(
                    e.message.topic,
                    e.message.partition,
                    e.message.offset,
                    e.message.key,
                    e.message.value,
                    e,
                )
                for e in events
            ]
            metrics.BATCH_EVENTS.observe(len(messages))
            with metrics.BATCH_SECONDS.time():
                await self.process_until_done(messages)
            self._last_done = asyncio.get_running_loop().time()
            for event in events:
                await stream.ack(event)
            await self._batches.release(events)

    async def process_until_done(self, messages: Sequence[InputMessage]) -> None:
        """Processes ``messages``; returns when each is applied or dead-lettered.

        Per-event problems are handled inside the processor (dead letters);
        what reaches here is Kafka refusing a write, or a bug.
        """
        attempt = 0
        while True:
            if attempt and self._background is not None:
                await self._background.prepare()  # what a retry may wait for
            try:
                await self._processor.process(messages)
                return
            except Exception as exc:
                metrics.BATCH_FAILURES.inc()
                failure = exc
            if not is_outage(failure):
                if len(messages) > 1:
                    # Isolate the cause: each half in turn, in order.
                    middle = len(messages) // 2
                    log.warning(
                        "batch of %d events failed (%s); splitting it",
                        len(messages),
                        type(failure).__name__,
                    )
                    await self.process_until_done(messages[:middle])
                    await self.process_until_done(messages[middle:])
                    return
                if await self._dead_letter(messages[0], failure):
                    return
            attempt += 1
            log.warning(
                "batch of %d events failed (%s: %s); retry %d",
                len(messages),
                type(failure).__name__,
                failure,
                attempt,
            )
            await asyncio.sleep(backoff_s(attempt, self._backoff_max_s))

    async def _dead_letter(self, message: InputMessage, failure: Exception) -> bool:
        """Dead-letters the poison event; False when that failed too (retry)."""
        # The traceback without the exception's message, which may quote values.
        log.error(
            "event %s[%d]@%d fails its batch (%s); dead-lettered",
            message.topic,
            message.partition,
            message.offset,
            type(failure).__name__,
            extra={"traceback": "".join(traceback.format_tb(failure.__traceback__))},
        )
        detail = f"{type(failure).__name__} while processing the event: {failure}"
        try:
            await self._processor.dead_letter(message, DeadLetterReason.INTERNAL_ERROR, detail)
        except Exception as exc:
            log.warning("dead letter not written (%s: %s)", type(exc).__name__, exc)
            return False
        return True
