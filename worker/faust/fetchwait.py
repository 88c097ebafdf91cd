"""How long a fetch may wait at the broker: 100 ms, not the 1,500 ms Faust hard-codes.

faust-streaming 0.15.3 creates its consumer with ``fetch_max_wait_ms=1500``
(``AIOKafkaConsumerThread._create_worker_consumer``), not configurable. aiokafka
keeps one fetch in flight per broker, and leaves out of it the partitions that
still have records buffered. When the worker is a little behind, the fetch it
sends can hold only partitions with nothing new (the idle profile-update topic,
say); the broker holds it for the whole wait, and no partition of that broker
is fetched meanwhile. Under a steady live load the worker then ran in 1.5 s
steps (latency figures in docs/benchmarks.md). An idle worker sends one empty
fetch per 100 ms instead of per 1.5 s. Not reported upstream.

Proved by tests/unit/test_faust_fetchwait.py (the consumer is created with it);
measured by bench/throughput.py's latency run.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 100

original_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = original_create_worker_consumer(self, transport)
    # Read by AIOKafkaConsumer.start(), which builds the Fetcher with it.
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
    return consumer


def apply() -> None:
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
