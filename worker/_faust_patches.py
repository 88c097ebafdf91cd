"""A fix to faust-streaming 0.15.3's offset commits, for at-least-once across rebalances.

``Consumer._new_offset`` commits past one missing offset: its guard
``min(acked) - committed > 1`` lets ``min(acked) == committed + 1`` through,
although ``committed`` is the next offset to read. An event delivered around
the resume after a rebalance that never reached the agent was then committed
unprocessed: lost (tests/integration/test_scaling.py saw a profile update
missing from the table, all of that profile's later records without
attributes; a repro lost one update in 7 of 28 runs).

The fix: never commit while the lowest acked offset is above the committed one
and no recorded gap explains it, and drop duplicate offsets from the acked
list. The skipped events come from a second Faust problem (faust-streaming#596,
robinhood/faust#559): recovery resumes the input partitions before seeking
them to the committed offsets, so records from the old position arrive and the
seek lands behind them; offsets then go missing or are acked twice (commits
crawled one offset per commit after a rebalance). ``Recovery.on_recovery_completed``
is replaced by 0.15.3's body with the seek before the resume. With it the
scaling test passed 12 of 12 runs; without it an event skipped at a rebalance
came back only out of order. In 2 of 14 runs of the kill test a restarted
worker then received no event at all, which
``worker.monitoring.StateSampler.unstick`` detects and repairs.

A skipped event now holds the partition's commits instead of being lost, and
``worker.monitoring.StateSampler.replay_holes`` fetches the partition again
from it after 15 s, as a restart would (``kd_hole_replays_total``). The patch
refuses to apply to another Faust version: an upgrade has to look at it again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.tables import recovery as _recovery
from faust.transport import consumer as _consumer

PATCHED_VERSION = "0.15.3"
_applied = False


async def _on_recovery_completed(self: Any, generation_id: int = 0) -> None:
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
    if assignment:
        # Seek BEFORE resuming: nothing may be fetched from the old position.
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    if self.app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    self.completed.set()
    self.app.flow_control.resume()
    consumer.resume_flow()
    await self.app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


_original_new_offset = _consumer.Consumer._new_offset


def skipped_offset(consumer: Any, tp: Any) -> int | None:
    """The committed offset of ``tp`` when it was never acknowledged while later
    ones were, and no recorded gap explains it; else None."""
    acked = consumer._acked.get(tp)
    committed = consumer._committed_offset.get(tp)
    if not acked or committed is None or min(acked) <= committed or consumer._gap.get(tp):
        return None
    committed_offset: int = committed
    return committed_offset


def _new_offset(self: Any, tp: Any) -> int | None:
    acked = self._acked[tp]
    if acked:
        acked[:] = sorted(set(acked))
    if skipped_offset(self, tp) is not None:
        return None  # the next offset to commit was never acknowledged
    result: int | None = _original_new_offset(self, tp)
    return result


def apply() -> None:
    global _applied
    if _applied:
        return
    if faust.__version__ != PATCHED_VERSION:
        raise RuntimeError(
            f"worker._faust_patches fixes faust-streaming {PATCHED_VERSION}, "
            f"found {faust.__version__}: check the fix against it before upgrading"
        )
    _consumer.Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    _recovery.Recovery.on_recovery_completed = _on_recovery_completed  # type: ignore[method-assign]
    _applied = True
