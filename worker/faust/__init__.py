"""Everything that reaches into faust-streaming's (and aiokafka's) internals.

One module per workaround; each names the upstream issue and the test that
proves it:

- ``fetch``: the consumer thread fetches the partitions Faust asked for, not
  a live set that recovery empties (the post-restart stall); offsets without
  a record (transaction markers, compaction) are recorded.
- ``commits``: never commit past a record that was not acknowledged
  (faust-streaming#606), and commit over offsets that hold no record.
- ``fetchwait``: a fetch waits at the broker 100 ms, not a hard-coded 1.5 s
  that stalls a busy worker behind idle partitions.
- ``recovery``: seek before resume after table recovery (faust-streaming#596).
- ``acks``: acknowledgements of events a stream skipped at a rebalance do not
  count in the next generation.
- ``tables``: the current event for table writes, and durable changelog writes.
- ``repair``: last-resort hole replay and fetch watchdog, counted in metrics.

Speed-ups, not fixes (``apply_speedups()``; the benchmark's no-op agent runs
without them so that it stays the stock agent):

- ``handover``: a fetched record reaches the streams without a task per record.
- ``monitor``: Faust's monitor sensor without its per-event bookkeeping
  (passed to the app by worker.app).

And the adapters of the pipeline's ports to Faust: ``tables`` (above) and
``deadletters`` (the dead-letter topic on the app's producer); ``state`` reads
Faust's private state for metrics and repairs.

``apply()`` refuses other versions: an upgrade has to look at each again.
"""

from __future__ import annotations

import aiokafka
import faust

from worker.faust import fetch

PATCHED_VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14."}
_applied = False
_sped_up = False


def check_versions(faust_version: str, aiokafka_version: str) -> None:
    if faust_version != PATCHED_VERSIONS["faust-streaming"] or not aiokafka_version.startswith(
        PATCHED_VERSIONS["aiokafka"]
    ):
        raise RuntimeError(
            f"worker.faust fixes faust-streaming {PATCHED_VERSIONS['faust-streaming']} with "
            f"aiokafka {PATCHED_VERSIONS['aiokafka']}x, found {faust_version} with "
            f"{aiokafka_version}: check each fix against them before upgrading"
        )


def apply() -> None:
    global _applied
    if _applied:
        return
    check_versions(faust.__version__, aiokafka.__version__)
    from faust.transport import consumer

    from worker.faust import acks, commits, fetchwait, recovery

    consumer.Consumer._new_offset = commits._new_offset  # type: ignore[method-assign]
    fetch.apply()
    fetchwait.apply()
    recovery.apply()
    acks.apply()
    _applied = True


def apply_speedups() -> None:
    global _sped_up
    if _sped_up:
        return
    check_versions(faust.__version__, aiokafka.__version__)
    from worker.faust import handover

    handover.apply()
    _sped_up = True
