"""worker.faust.repair: the last-resort hole replay and fetch watchdog, on a fake consumer."""

from __future__ import annotations

from typing import Any

from aiokafka.structs import TopicPartition
from faust.types import TP
from prometheus_client import REGISTRY

from worker.faust import fetch
from worker.faust.positions import reposition, seek_to_committed
from worker.faust.repair import Repairs


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


class _Thread:
    def __init__(self, consumer: _Consumer) -> None:
        self.consumer = consumer

    async def seek_to_beginning(self, tp: Any) -> None:
        assert isinstance(tp, TopicPartition), "aiokafka refuses other types"
        self.consumer.seeks.append((TP(tp.topic, tp.partition), "beginning"))


class _Consumer:
    def __init__(self, topic: str) -> None:
        self.q0, self.q1, self.p0 = TP(topic, 0), TP(topic, 1), TP(f"{topic}-p", 0)
        self.assigned = {self.q0, self.q1, self.p0, TP("other", 0)}
        self._committed_offset: dict[TP, int | None] = {self.q0: 90}
        self._acked: dict[TP, list[int]] = {}
        self._active_partitions: set[TP] = set()
        self._paused_partitions: set[TP] = {self.q0}
        self._read_offset: dict[TP, int | None] = {}
        self._thread = _Thread(self)
        self.seeks: list[tuple[Any, Any]] = []
        self.resumed: set[TP] = set()

    async def seek_wait(self, partitions: dict[Any, int]) -> None:
        for tp, offset in partitions.items():
            assert isinstance(tp, TopicPartition), "aiokafka's own type, in its thread"
            self.seeks.append((TP(tp.topic, tp.partition), offset))

    def resume_partitions(self, tps: Any) -> None:
        self.resumed = set(tps)

    def resume_flow(self) -> None:
        pass

    async def perform_seek(self) -> None:
        self.seeks.append(("all", "committed"))

    async def position(self, tp: TP) -> int:
        return 7

    def assignment(self) -> set[TP]:
        return self.assigned


class _Completed:
    def is_set(self) -> bool:
        return True


class _App:
    rebalancing = False

    def __init__(self, topic: str) -> None:
        self.consumer = _Consumer(topic)
        recovery = type("Recovery", (), {"completed": _Completed()})()
        self.tables = type("Tables", (), {"recovery": recovery})()
        self.flow_control = type("Flow", (), {"resume": lambda self: None})()


def repairs(topic: str, activity: list[tuple[float, int]], lag: int = 67) -> tuple[_App, Repairs]:
    app = _App(topic)
    return app, Repairs(app, [topic, f"{topic}-p"], lambda: activity[-1], lambda: lag)


async def test_a_skipped_offset_is_fetched_again_after_a_while() -> None:
    app, found = repairs("hole-q", [(0.0, 0)])
    consumer = app.consumer
    consumer._acked[consumer.q0] = [91, 92]  # committed 90: 90 never acked, 91 and 92 were
    await found.replay_holes(now=100.0)
    await found.replay_holes(now=110.0)
    assert consumer.seeks == []
    await found.replay_holes(now=116.0)
    assert consumer.seeks == [(consumer.q0, 90)]
    assert sample("kd_hole_replays_total", topic="hole-q") == 1


async def test_without_a_commit_the_hole_is_where_fetching_began() -> None:
    app, found = repairs("hole-nc", [(0.0, 0)])
    consumer = app.consumer
    fetch.SPANS.record(consumer.q1, None, 0, 4, [0, 1, 2, 3])  # 0 never reached the agent
    consumer._acked[consumer.q1] = [1, 2, 3]
    await found.replay_holes(now=0.0)
    await found.replay_holes(now=20.0)
    assert consumer.seeks == [(consumer.q1, 0)]


async def test_in_order_acks_markers_and_rebalances_replay_nothing() -> None:
    app, found = repairs("hole-none", [(0.0, 0)])
    consumer = app.consumer
    consumer._acked[consumer.q0] = [90, 91]  # the batch, in order
    consumer._committed_offset[consumer.p0] = 10
    consumer._acked[consumer.p0] = [12]
    fetch.SPANS.record(consumer.p0, None, 10, 13, [11, 12])  # 10: a marker; 11 in flight
    consumer._acked[consumer.p0] = [11, 12]
    for now in (0.0, 20.0, 40.0):
        await found.replay_holes(now)
    consumer._acked[consumer.q0] = [95]
    app.rebalancing = True
    for now in (60.0, 80.0, 100.0):
        await found.replay_holes(now)
    assert consumer.seeks == []


async def test_reposition_seeks_to_committed_or_where_fetching_began() -> None:
    consumer = _Consumer("repos")
    fetch.SPANS.record(consumer.q1, None, 5, 6, [5])
    targets = await reposition(consumer, [consumer.q0, consumer.q1, consumer.p0])
    assert targets == {consumer.q0: 90, consumer.q1: 5, consumer.p0: None}
    assert consumer.seeks == [(consumer.q0, 90), (consumer.q1, 5), (consumer.p0, "beginning")]


async def test_the_seek_after_recovery_sends_uncommitted_partitions_to_the_reset_position() -> None:
    """aiokafka's seek_to_committed leaves them where they are: past records a
    recovery dropped."""
    consumer = _Consumer("after-recovery")
    consumer._committed_offset[consumer.q1] = 0  # 0: nothing processed
    await seek_to_committed(consumer, [consumer.q0, consumer.q1, consumer.p0])
    assert consumer.seeks == [
        ("all", "committed"),
        (consumer.q1, 0),
        (consumer.p0, "beginning"),
    ]


async def test_a_ready_worker_with_lag_that_receives_nothing_fetches_again(
    caplog: Any,
) -> None:
    activity = [(0.0, 0)]
    app, found = repairs("stuck-q", activity)
    consumer = app.consumer
    before = sample("kd_fetch_restarts_total")
    await found.watchdog(now=1000.0)
    await found.watchdog(now=1015.0)
    assert consumer.seeks == []
    await found.watchdog(now=1021.0)
    assert consumer.resumed == {consumer.q0, consumer.q1, consumer.p0}
    assert sorted(consumer.seeks, key=str) == sorted(
        [(consumer.q0, 90), (consumer.q1, "beginning"), (consumer.p0, "beginning")], key=str
    )
    assert sample("kd_fetch_restarts_total") == before + 1
    assert not found.stuck
    # What the consumer was doing is in the log.
    assert "paused ['stuck-q[0]']" in caplog.text
    assert "positions {" in caplog.text
    await found.watchdog(now=1042.0)  # still nothing: only a restart will do
    assert found.stuck
    # Events buffered (a slow Kinesis, say) or arriving: not stuck.
    activity.append((1021.0, 5))
    await found.watchdog(now=1100.0)
    assert not found.stuck
    activity.append((1095.0, 0))
    await found.watchdog(now=1110.0)
    assert sample("kd_fetch_restarts_total") == before + 2


async def test_no_lag_is_never_stuck() -> None:
    app, found = repairs("idle-q", [(0.0, 0)], lag=0)
    for now in (0.0, 30.0, 60.0, 90.0):
        await found.watchdog(now)
    assert app.consumer.seeks == []
    assert not found.stuck


async def test_a_stalled_table_recovery_says_what_the_consumer_holds(caplog: Any) -> None:
    app, found = repairs("recovery", [(0.0, 0)])
    changelog, done = TP("recovery-changelog", 5), TP("recovery-changelog", 0)
    recovery = app.tables.recovery
    recovery.in_recovery = True
    recovery.active_tps = {changelog, done}
    recovery.active_offsets = {changelog: 10, done: 40}
    recovery.active_highwaters = {changelog: 327, done: 40}
    app.tables.changelog_queue = type("Queue", (), {"qsize": lambda self: 0})()
    consumer: Any = app.consumer
    consumer._buffered_partitions = set()
    consumer.flow_active = True
    consumer.suspend_flow = type("Event", (), {"is_set": lambda self: False})()
    app.flow_control.is_active = lambda: True
    consumer._read_offset[changelog] = 326
    await found.recovery_watch(now=0.0)
    await found.recovery_watch(now=10.0)
    assert "recovery stalled" not in caplog.text
    recovery.active_offsets[done] = 40  # progress elsewhere does not count
    await found.recovery_watch(now=21.0)
    assert "table recovery stalled on ['recovery-changelog[5]']" in caplog.text
    assert "'recovery-changelog[5]': 326" in caplog.text  # its read offset
    caplog.clear()
    recovery.active_offsets[changelog] = 11  # it moved: the clock starts again
    await found.recovery_watch(now=30.0)
    recovery.in_recovery = False
    await found.recovery_watch(now=60.0)
    assert "recovery stalled" not in caplog.text
