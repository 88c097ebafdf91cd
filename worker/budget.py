"""One byte budget for everything a worker holds: input events taken from Kafka
and not yet done, records built and not yet accepted, dead letters not yet sent.

Reading waits for room (back-pressure on Kafka); the batch being processed
never waits (it would wait for itself), it delivers what it holds as soon as
the budget is exceeded instead. So what is held stays within the budget plus
the output of one event.
"""

from __future__ import annotations

import asyncio

from worker import metrics


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._room = asyncio.Condition()

    @property
    def over(self) -> bool:
        return self.used > self.limit

    def fits(self, size: int) -> bool:
        """Whether ``size`` bytes could ever be held at once."""
        return size <= self.limit

    async def reserve(self, size: int) -> None:
        """Waits for room, then holds ``size`` bytes. Something always fits in an
        empty budget, however large, so nothing can wedge."""
        async with self._room:
            await self._room.wait_for(lambda: self.used == 0 or self.used + size <= self.limit)
            self.used += size
        metrics.BUFFERED_BYTES.set(self.used)

    def take(self, size: int) -> None:
        """Holds ``size`` bytes without waiting (output of the batch in progress)."""
        self.used += size
        metrics.BUFFERED_BYTES.set(self.used)

    async def release(self, size: int) -> None:
        async with self._room:
            self.used -= size
            self._room.notify_all()
        metrics.BUFFERED_BYTES.set(self.used)
