"""Seek before resume at the end of table recovery.

faust-streaming 0.15.3's ``Recovery.on_recovery_completed`` resumes the input
partitions and only then seeks them to their committed offsets, so records
from the old position can arrive and the seek lands behind them: offsets then
go missing or are acknowledged twice (faust-streaming#596, robinhood/faust#559;
commits crawled one offset per commit after a rebalance). This is 0.15.3's
body with the seek moved before the resume, and partitions without a
committed offset sought to the reset position (``positions.py``).

Proved by tests/integration/test_scaling.py (partitions moving between
workers: nothing lost, nothing out of order).
"""

from __future__ import annotations

import asyncio
from typing import Any

from worker.faust import positions


async def on_recovery_completed(self: Any, generation_id: int = 0) -> None:
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callbacks = [
        asyncio.ensure_future(
            table.on_recovery_completed(
                self.actives_for_table[table], self.standbys_for_table[table]
            )
        )
        for table in self.tables.values()
    ]
    if callbacks:
        await asyncio.wait(callbacks)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
    if assignment:
        # Seek BEFORE resuming: nothing may be fetched from the old position.
        # Partitions without a commit go to the reset position: records fetched
        # there before the recovery paused them were dropped (fetch.py).
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(
            positions.seek_to_committed(consumer, streams),
            timeout=self.app.conf.broker_request_timeout,
        )
    if self.app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    consumer.resume_partitions(streams)
    self.completed.set()
    self.app.flow_control.resume()
    consumer.resume_flow()
    await self.app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


def apply() -> None:
    from faust.tables import recovery

    recovery.Recovery.on_recovery_completed = on_recovery_completed  # type: ignore[method-assign]
