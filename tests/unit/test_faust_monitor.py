"""worker.faust.monitor: no per-event bookkeeping, the livelock check's clock kept."""

from __future__ import annotations

from typing import Any

from faust.types import TP

from worker.faust.monitor import LeanMonitor

IN = TP("in", 3)


def test_only_the_stream_inbound_time_is_kept() -> None:
    monitor: Any = LeanMonitor()
    message, event, stream = object(), object(), object()
    monitor.on_message_in(IN, 5, message)
    state = monitor.on_stream_event_in(IN, 5, stream, event)
    monitor.on_stream_event_out(IN, 5, stream, event, state)
    monitor.on_message_out(IN, 5, message)
    assert IN in monitor.stream_inbound_time
    assert monitor.messages_received_total == 0
    assert monitor.events_total == 0
    assert not monitor.events_by_stream
