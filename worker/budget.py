"""One byte budget for everything a worker holds: input events taken from Kafka
and not yet done, records built and not yet accepted, dead letters not yet sent.

Half is for input, half for output. Reading waits for room in its half
(back-pressure on Kafka). The batch being processed never waits, since it would
be waiting for itself. It delivers what it holds once its half is full. Split
this way, neither side can starve the other: if output only got what input
left over, a full input queue would force one put per event. So what is held
stays within the budget plus the output of one event.
"""

from __future__ import annotations

import asyncio

from worker import metrics


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.share = limit // 2
        self.input = 0
        self.output = 0
        self._room = asyncio.Condition()

    @property
    def used(self) -> int:
        return self.input + self.output

    @property
    def over(self) -> bool:
        """Whether the output held is over its half: time to deliver it."""
        return self.output > self.share

    def fits(self, size: int) -> bool:
        """Whether one record of ``size`` bytes can be held at all."""
        return size <= self.share

    async def reserve_input(self, size: int) -> None:
        """Waits for room, then holds ``size`` input bytes. Something always fits
        when no input is held, however large, so nothing can wedge."""
        if not self._fits_input(size):
            async with self._room:
                await self._room.wait_for(lambda: self._fits_input(size))
        self.input += size
        self._report()

    def _fits_input(self, size: int) -> bool:
        return self.input == 0 or self.input + size <= self.share

    async def release_input(self, size: int) -> None:
        self.input -= size
        async with self._room:
            self._room.notify_all()
        self._report()

    def take_output(self, size: int) -> None:
        """Holds ``size`` bytes of output, without waiting."""
        self.output += size
        self._report()

    def release_output(self, size: int) -> None:
        self.output -= size
        self._report()

    def _report(self) -> None:
        metrics.BUFFERED_BYTES.set(self.used)
