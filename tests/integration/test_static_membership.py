"""Kafka static membership: a worker restarted after SIGKILL with the same
``runtime.instance_id`` gets its own partitions back at once, and the other
worker is not rebalanced.

Two workers on 8 partitions, a steady load; the second worker is killed and
started again with the same instance id and web port (Faust's group metadata
carries the worker's URL: a changed URL would be a changed subscription).
The killed worker is the one that joined second, so it is not the group's
leader: a rejoining static leader makes the coordinator rebalance (aiokafka's
JoinGroup predates KIP-814's skip-assignment).

The time from the kill to the restarted worker committing again is printed
here and measured by ``bench/restart.py``, with and without static membership;
nothing is timed in the assertions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    SEG_A,
    Deployment,
    GroupMonitor,
    LoadProducer,
    Sample,
    ecid,
    entered_then_left,
    unique,
)
from tests.support import Stack, qualification

PARTITIONS = 8
PROFILES = 1500
RATE = 400.0  # qualification events per second


@dataclass(frozen=True)
class Restart:
    static: bool
    committing_again_s: float  # SIGKILL -> every partition of the killed worker committed again
    other_rebalanced: bool  # the worker that was not killed went through a rebalance
    same_partitions: bool  # the restarted worker holds the partitions it held before
    received: int
    violations: int
    repairs: int  # last-resort repairs logged by either worker


def restart_after_sigkill(stack: Stack, workdir: Path, static: bool) -> Restart:
    name = unique("it-static")
    deployment = Deployment(stack, name, workdir, partitions=PARTITIONS)
    deployment.create()
    monitor = GroupMonitor(stack.kafka_bootstrap, name, [deployment.q_topic, deployment.p_topic])
    load: LoadProducer | None = None
    try:
        q = deployment.q_topic

        def runtime(worker: str) -> dict[str, Any]:
            settings: dict[str, Any] = {"session_timeout_ms": 45_000, "batch_max_events": 200}
            if static:
                settings["instance_id"] = worker
            return settings

        def members(sample: Sample) -> dict[str, frozenset[int]]:
            return {member: topics[q] for member, topics in sample.members.items()}

        def balanced(sample: Sample) -> bool:
            held = sorted(p for parts in members(sample).values() for p in parts)
            return (
                sample.state == "Stable"
                and len(sample.members) == 2
                and held == list(range(PARTITIONS))
            )

        w1 = deployment.worker("w1", **runtime("w1"))
        w1.start()
        w2 = deployment.worker("w2", **runtime("w2"))
        w2.start()
        before = monitor.wait_for("two members, all partitions", balanced, time.monotonic(), 90)
        (w2_member,) = [m for m in before.members if m not in _first_member(monitor)]
        w2_partitions = members(before)[w2_member]

        profiles = [f"s-{i:05d}" for i in range(PROFILES)]
        plan = [
            (q, "enter", p, qualification(p, SEG_A, "realized", "2021-07-01T00:00:00Z", ecid(p)))
            for p in profiles
        ] + [
            (q, "exit", p, qualification(p, SEG_A, "exited", "2021-07-02T00:00:00Z", ecid(p)))
            for p in profiles
        ]
        load = LoadProducer(stack.kafka_bootstrap, plan, RATE, [])
        load.start()
        time.sleep(3)  # mid-stream
        rebalances = w1.metric("kd_rebalances_total")
        at_kill = monitor.sample_now()
        w2.kill()
        killed_at = time.monotonic()
        w2.start(wait_ready=False)

        def w2_committing(sample: Sample) -> bool:
            return all(
                sample.committed.get((q, p), -1) > at_kill.committed.get((q, p), -1)
                or sample.committed.get((q, p), -1) >= load.ends.get((q, p), 0) > 0
                for p in w2_partitions
            )

        again = monitor.wait_for("the restarted worker committing", w2_committing, killed_at, 150)
        # A static member keeps its place while it is down; its new member id
        # (or, without static membership, a rebalance) shows it is back.
        settled = monitor.wait_for(
            "the restarted worker back in the group",
            lambda s: balanced(s) and set(s.members) != set(at_kill.members),
            killed_at,
            90,
        )
        restarted_holds = [
            parts for m, parts in members(settled).items() if m not in at_kill.members
        ]
        deadline = time.monotonic() + 120
        while not load.done:
            assert time.monotonic() < deadline, "the load did not finish"
            time.sleep(0.1)
        assert load.error is None, repr(load.error)
        received, violations = entered_then_left(deployment, profiles, timeout=120)
        return Restart(
            static=static,
            committing_again_s=again.at - killed_at,
            other_rebalanced=w1.metric("kd_rebalances_total") != rebalances,
            same_partitions=restarted_holds == [w2_partitions],
            received=received,
            violations=violations,
            repairs=len(w1.repairs()) + len(w2.repairs()),
        )
    finally:
        if load is not None:
            load.stop()
        monitor.close()
        deployment.destroy()


def _first_member(monitor: GroupMonitor) -> set[str]:
    """The member id of the first worker: the only member in the first samples."""
    for sample in monitor.samples:
        if len(sample.members) == 1:
            return set(sample.members)
    raise AssertionError("the first worker was never alone in the group")


def test_a_restarted_static_member_keeps_its_partitions_without_a_rebalance(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = restart_after_sigkill(stack, tmp_path, static=True)
    with capsys.disabled():
        print(f"\n[static] {result}")
    assert result.violations == 0, "every profile realized then exited, in order"
    assert result.received >= 2 * PROFILES
    assert result.same_partitions, "the restarted worker got its own partitions back"
    assert not result.other_rebalanced, "the other worker was not rebalanced"
    assert result.repairs == 0
