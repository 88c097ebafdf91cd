"""Faust's monitor without its per-event bookkeeping.

Faust's ``Monitor`` sensor counts and times every message and event (by topic,
stream, task) in dicts and deques that only Faust's own web views and
``app.monitor`` read. The worker serves its own metrics (worker.metrics) and
has Faust's web server off, so that work is pure cost on every event. Kept:
``stream_inbound_time``, which the consumer's livelock check reads
(``AIOKafkaConsumerThread.verify_event_path``). A speed-up, not a fix; not
reported upstream.

Proved by tests/unit/test_faust_monitor.py.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from faust.sensors.monitor import Monitor


class LeanMonitor(Monitor):
    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        self.stream_inbound_time[tp] = monotonic()

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_table_get(self, table: Any, key: Any) -> None:
        pass

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        pass

    def on_table_del(self, table: Any, key: Any) -> None:
        pass

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> Any:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        pass
