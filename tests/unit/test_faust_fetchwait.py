"""worker.faust.fetchwait: the worker's consumer fetches with a short broker wait."""

from __future__ import annotations

import faust

from worker import faust as fixes
from worker.faust import fetchwait


async def test_the_worker_consumer_waits_at_most_100_ms_per_fetch() -> None:
    fixes.apply()
    app = faust.App("t-fetchwait", broker="kafka://127.0.0.1:1", store="memory://")
    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._create_worker_consumer(app.transport)
    try:
        assert consumer._fetch_max_wait_ms == fetchwait.FETCH_MAX_WAIT_MS == 100
    finally:
        await consumer.stop()  # never started: closes its client
