"""Two fixes to faust-streaming 0.15.3's consumer, for at-least-once across rebalances.

Found by tests/integration/test_scaling.py (workers joining, stopped and killed
mid-stream on 8 partitions); without them that test lost an event or stalled
commits for minutes in about 1 run in 3.

1. Recovery resumes the input partitions *before* seeking them to the
   committed offsets (``Recovery.on_recovery_completed``). Records from the old
   position are delivered, the seek then lands behind them, and the consumer
   records the jump as a "gap" whose offsets it later merges into the acked
   list as duplicates: the committed offset then crawls one offset per commit,
   so lag does not drain and a crash in that window replays everything since.
   Fixed by seeking first, then resuming (upstream: faust-streaming#596,
   robinhood/faust#559; faust-streaming#216/#217 fixed only the no-table path).

2. ``Consumer._new_offset`` commits past one missing offset: its guard
   ``min(acked) - committed > 1`` lets ``min(acked) == committed + 1`` through,
   although ``committed`` is the next offset to read. An event delivered around
   the post-rebalance resume that never reached the agent was then committed
   unprocessed: lost (seen: a profile update missing from the table, all of the
   profile's later records without attributes). Fixed by never committing while
   the lowest acked offset is above the committed one and no gap explains it;
   duplicates in the acked list are dropped too. A message that never arrives
   then shows as a commit stall (consumer lag; alerted) instead of a silent loss.

The recovery body is 0.15.3's with the two steps swapped; the patch refuses to
apply to another version, so an upgrade has to look at these again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from faust.tables import recovery as _recovery
from faust.transport import consumer as _consumer

log = logging.getLogger(__name__)

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


def _new_offset(self: Any, tp: Any) -> int | None:
    acked = self._acked[tp]
    if acked:
        acked[:] = sorted(set(acked))
        committed = self._committed_offset[tp]
        if committed is not None and acked[0] > committed and not self._gap[tp]:
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
            f"found {faust.__version__}: check the fixes against it before upgrading"
        )
    # The whole point is to replace these methods.
    _recovery.Recovery.on_recovery_completed = _on_recovery_completed  # type: ignore[method-assign]
    _consumer.Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    _applied = True
