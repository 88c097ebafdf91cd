"""One wave: produce its events and wait until the worker has handled every one."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from .config import PHASE_TIMEOUT_S, STALL_TIMEOUT_S, say
from .feed import Message
from .observe import read_metrics
from .process import Worker, log_tail


@dataclass
class PhaseTiming:
    name: str
    events: int
    produce_s: float
    processing_s: float  # from the first event handled to the last export accepted


async def produce(producer: Any, messages: list[Message]) -> float:
    started = time.monotonic()
    futures = [await producer.send(topic, value, key=key) for topic, key, value in messages]
    await asyncio.gather(*futures)
    return time.monotonic() - started


async def run_phase(
    session: aiohttp.ClientSession,
    producer: Any,
    worker: Worker,
    name: str,
    messages: list[Message],
    target_events: int,
    target_exports: int,
) -> PhaseTiming | None:
    before = await read_metrics(session)
    task = asyncio.create_task(produce(producer, messages))
    first: float | None = None
    last_change = started = time.monotonic()
    seen = (before.events, before.exports)
    try:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            current = await read_metrics(session)
            failed = task.exception() if task.done() else None
            if failed is not None:
                raise RuntimeError(f"producing wave {name!r} failed: {failed!r}")
            if first is None and current.events > before.events:
                first = now
            if (current.events, current.exports) != seen:
                seen, last_change = (current.events, current.exports), now
            if (
                task.done()
                and current.events >= target_events
                and current.exports >= target_exports
            ):
                break
            why = None
            if not worker.alive():
                why = f"the worker exited (code {worker.process.returncode})"
            elif now - started > PHASE_TIMEOUT_S:
                why = f"not done after {PHASE_TIMEOUT_S:.0f} s"
            elif task.done() and now - last_change > STALL_TIMEOUT_S:
                why = f"no progress for {STALL_TIMEOUT_S:.0f} s"
            if why:
                say(
                    f"wave {name!r}: {why}: events {current.events:.0f}/{target_events}, "
                    f"exports {current.exports:.0f}/{target_exports}; log tail:"
                )
                print(log_tail(), flush=True)
                return None
        produce_s = await task
    finally:
        if not task.done():
            task.cancel()
    end = time.monotonic()
    timing = PhaseTiming(name, len(messages), produce_s, end - (first or started))
    say(
        f"wave {name!r}: {len(messages):,} events produced in {produce_s:.2f} s, "
        f"handled in {timing.processing_s:.2f} s "
        f"(events {current.events:.0f}/{target_events}, "
        f"exports {current.exports:.0f}/{target_exports})"
    )
    if current.events > target_events or current.exports > target_exports:
        say("note: the worker counted more than was sent (events replayed?)")
    return timing
