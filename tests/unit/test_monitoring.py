"""The state sampler (worker/monitoring.py): consumer lag, assignment, tables, recovery."""

from __future__ import annotations

from typing import Any, NamedTuple

from prometheus_client import REGISTRY

from tests.support import metric_value
from worker import metrics
from worker.monitoring import StateSampler


class TP(NamedTuple):
    topic: str
    partition: int


class _Consumer:
    def __init__(self) -> None:
        self.assigned = {TP("q", 0), TP("q", 1), TP("p", 0), TP("p", 1), TP("other", 0)}
        self.ends = {TP("q", 0): 100, TP("q", 1): 50, TP("p", 0): 7, TP("p", 1): 0}
        self._committed_offset: dict[TP, int | None] = {TP("q", 0): 90, TP("p", 0): None}
        self._acked: dict[TP, list[int]] = {}
        self._gap: dict[TP, Any] = {}
        self.seeks: list[tuple[TP, int]] = []

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    resumed: set[TP] | None = None
    sought_all = 0

    def resume_partitions(self, tps: set[TP]) -> None:
        self.resumed = set(tps)

    def resume_flow(self) -> None:
        pass

    async def perform_seek(self) -> None:
        self.sought_all += 1

    def assignment(self) -> set[TP]:
        return self.assigned

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.ends[tp] for tp in tps if tp in self.ends}


class _Completed:
    done = True

    def is_set(self) -> bool:
        return self.done


class _Recovery:
    in_recovery = True
    completed = _Completed()

    def active_remaining_total(self) -> int:
        return 12

    def standby_remaining_total(self) -> int:
        return 3


class _Table:
    def __init__(self, size: int) -> None:
        self.data = dict.fromkeys(range(size))


class _Flow:
    def resume(self) -> None:
        pass


class _App:
    rebalancing = False
    flow_control = _Flow()

    def __init__(self) -> None:
        self.consumer = _Consumer()
        self.tables = type("Tables", (), {"recovery": _Recovery()})()


async def test_sampler_reports_lag_per_assigned_input_partition() -> None:
    app = _App()
    sampler = StateSampler(app, {"profiles": _Table(5), "memberships": _Table(3)}, ["q", "p"])
    metrics.CONSUMER_LAG.labels(topic="q", partition="7").set(1)  # moved away meanwhile
    await sampler.sample()
    assert metric_value("kd_consumer_lag", topic="q", partition="0") == 10
    assert metric_value("kd_consumer_lag", topic="q", partition="1") == 50  # nothing committed yet
    assert metric_value("kd_consumer_lag", topic="p", partition="0") == 7
    assert metric_value("kd_consumer_lag", topic="p", partition="1") == 0
    assert REGISTRY.get_sample_value("kd_consumer_lag", {"topic": "q", "partition": "7"}) is None
    assert (
        REGISTRY.get_sample_value("kd_consumer_lag", {"topic": "other", "partition": "0"}) is None
    )
    assert metric_value("kd_assigned_partitions", topic="q") == 2
    assert metric_value("kd_table_keys", table="profiles") == 5
    assert metric_value("kd_table_keys", table="memberships") == 3
    assert metric_value("kd_recovering") == 1
    assert metric_value("kd_recovery_remaining_records", kind="active") == 12
    assert metric_value("kd_recovery_remaining_records", kind="standby") == 3

    app.consumer.assigned = set()
    await sampler.sample()
    assert metric_value("kd_assigned_partitions", topic="q") == 0
    assert REGISTRY.get_sample_value("kd_consumer_lag", {"topic": "q", "partition": "0"}) is None
