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
list. The duplicates come from a second Faust problem (faust-streaming#596,
robinhood/faust#559): recovery resumes the input partitions before seeking
them to the committed offsets, so records from the old position arrive, the
seek lands behind them, and the offsets between are acked twice; with
duplicates in the list the committed offset crawled one offset per commit
after a rebalance. Swapping seek and resume in ``Recovery.on_recovery_completed``
was tried and rejected: a restarted worker then sometimes received no event at
all (2 of 14 runs of the kill test stalled with every partition's lag intact),
while de-duplicating here removed the crawl (the scaling test commits every
partition again within 4-8 s of each change).

A message that never arrives now shows as a commit stall (consumer lag, which
is alerted) instead of a silent loss. The patch refuses to apply to another
Faust version: an upgrade has to look at it again.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport import consumer as _consumer

PATCHED_VERSION = "0.15.3"
_applied = False
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
            f"found {faust.__version__}: check the fix against it before upgrading"
        )
    _consumer.Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    _applied = True
