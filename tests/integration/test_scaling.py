"""Scaling by partitions: workers of one app_id share the partitions, and the
partitions, with the state in them, move when a worker joins, stops or dies.

One topic pair of 8 partitions, one stream. Two workers, then a third joins
mid-stream, then one is stopped with SIGTERM mid-stream, then another is killed
with SIGKILL mid-stream; the last one finishes. The load runs across all of it:

- first one profile update per profile (an email and an ecid), all committed
  before any qualification is sent (the two topics are not ordered);
- then a rolling stream of qualifications: profile k enters SEG_A and SEG_B at
  slot k; at slot k + LAG it enters SEG_A again (a duplicate: nothing to
  export, but its time is stored) and leaves SEG_B; at slot k + 2 * LAG it
  leaves SEG_A. So at every membership change some profiles were handled
  before it and get their next events after it, from another worker.

Per profile exactly four records are expected, all with the email and ecid:
entry A; entry B (A existing); exit B (A existing, at the duplicate's time);
exit A alone (B was left). Without the moved state the duplicate would export a
"realized" record and exit B would show the old time; with a stale copy (a
partition back to a worker that held it before) exit A would list SEG_B as
existing; an exit without state exports nothing or lacks the email. Repeats
(at least once) are allowed only for events that were not committed when a
membership changed, on the partitions that change could move; they are counted.

Where partitions are is read from Kafka: the consumer group's members and
their decoded assignments (DescribeGroups), and its committed offsets, sampled
a few times a second. Nothing is timed in the assertions: every wait is on a
condition with a generous deadline; the times are printed to be quoted (run
with -s; also recorded as the "scaling" property). A wait that times out says
per partition what is committed and which records arrived; wrong records come
with a diagnosis of their profiles (events, who committed them when, records,
changelog entries, dead letters), also written to the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.harness import (
    Deployment,
    GroupMonitor,
    LoadProducer,
    Report,
    Sample,
    Sent,
    ecid,
    one_stream,
    produce_recorded,
    unique,
)
from tests.support import Stack, StreamReader, profile_update, qualification, run_sync

PARTITIONS = 8
PROFILES = 2500
LAG = 800  # slots from a profile's entries to its duplicate entry and exit B, then to exit A
RATE = 260.0  # qualification events per second, produced steadily across the phases

SEG_A = "5ca1ab1e-0000-4000-8000-00000000000a"
SEG_B = "5ca1ab1e-0000-4000-8000-00000000000b"
T_ENTER_A = "2022-03-01T00:00:00Z"
T_ENTER_B = "2022-03-01T00:00:01Z"
T_AGAIN = "2022-03-02T00:00:00Z"
T_EXIT = "2022-03-03T00:00:00Z"

# Qualification events (total 5 * PROFILES) produced when each change is fired,
# and the positions production may not pass before it was fired (so every
# change happens mid-stream even on a slow machine; production only pauses
# there if the previous change took very long to settle).
CHANGES: list[tuple[str, float, float]] = [
    ("join", 0.10, 0.32),
    ("sigterm", 0.40, 0.62),
    ("sigkill", 0.66, 0.88),
]

# Record kinds in the order a profile's records must arrive.
EXPECTED_KINDS = ("enter_a", "enter_b", "leave_b", "exit")


@dataclass(frozen=True, slots=True)
class Moved:
    """What one membership change exercised: partitions that changed owner, and
    profiles there whose next event was handled by the new owner on the state the
    previous one wrote."""

    partitions: int
    duplicates: int  # duplicate entry after both entries
    exits: int  # exit A after both entries
    exits_after_exit_b: int  # exit A after the duplicate entry and exit B


@dataclass
class Change:
    name: str
    worker: str  # the worker that joined, stopped or died
    fired_at: float
    before: Sample  # sampled just before the change was made
    owners_before: dict[int, str]  # partition -> worker name (the settled assignment)
    assigned: Sample | None = None  # first balanced sample with the new members
    flowing: Sample | None = None  # every partition committed again after that
    broker_start: float | None = None  # first sample where the group left that state
    owners_after: dict[int, str] = field(default_factory=dict)


def left_state_of(before: Sample) -> Callable[[Sample], bool]:
    """True for a sample where the group is no longer as in ``before``: rebalancing, or
    other members."""

    def left(sample: Sample) -> bool:
        return sample.state != "Stable" or set(sample.members) != set(before.members)

    return left


# -- the deployment ------------------------------------------------------------------------


class Scaled(Deployment):
    """The deployment of one test (8 partitions, one stream), with its group monitor."""

    def __init__(self, stack: Stack, workdir: Path) -> None:
        super().__init__(
            stack,
            unique("it-scale"),
            workdir,
            PARTITIONS,
            destinations=one_stream("Scaling", [SEG_A, SEG_B]),
            shards=4,
            runtime={"batch_max_events": 500, "batch_linger_ms": 50},
        )
        self.member_of: dict[str, str] = {}  # group member id -> worker name
        self.monitor: GroupMonitor | None = None
        self.load: LoadProducer | None = None

    def create(self) -> None:
        super().create()
        self.monitor = GroupMonitor(
            self.stack.kafka_bootstrap, self.name, [self.q_topic, self.p_topic]
        )

    def destroy(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        super().destroy()

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}:\n{w.log(40)}" for w in self.workers)

    def balanced(self, sample: Sample, count: int) -> bool:
        """Stable, ``count`` members, every partition of both topics assigned once,
        each member holding the same partition numbers of both topics, and
        between floor(8 / count) and ceil(8 / count) of them."""
        if sample.state != "Stable" or len(sample.members) != count:
            return False
        low, high = PARTITIONS // count, math.ceil(PARTITIONS / count)
        for topic in (self.q_topic, self.p_topic):
            held = [p for topics in sample.members.values() for p in topics[topic]]
            if sorted(held) != list(range(PARTITIONS)):
                return False
        return all(
            topics[self.q_topic] == topics[self.p_topic]
            and low <= len(topics[self.q_topic]) <= high
            for topics in sample.members.values()
        )

    def settle(self, count: int, keep: set[str], since: float, timeout: float = 90) -> Sample:
        """Waits for a balanced group of ``count`` members including the ids in ``keep``."""
        assert self.monitor is not None
        return self.monitor.wait_for(
            lambda: (
                f"{count} members holding all {PARTITIONS} partitions, balanced\n"
                f"{self.logs()}\n{self.progress()}"
            ),
            lambda s: keep <= set(s.members) and self.balanced(s, count),
            since,
            timeout,
        )

    def owners(self, sample: Sample) -> dict[int, str]:
        return {p: self.member_of[m] for p, m in sample.owners(self.q_topic).items()}

    def layout(self, sample: Sample) -> str:
        by_worker = {
            self.member_of[m]: sorted(topics[self.q_topic]) for m, topics in sample.members.items()
        }
        return ", ".join(f"{n} {by_worker[n]}" for n in sorted(by_worker))

    def flowing(self, since: Sample, ends: dict[tuple[str, int], int], timeout: float) -> Sample:
        """The first sample where every partition committed past where it was at
        ``since``, or has committed everything produced to it."""
        assert self.monitor is not None

        def moving(sample: Sample) -> bool:
            for p in range(PARTITIONS):
                tp = (self.q_topic, p)
                now = sample.committed.get(tp, -1)
                if now <= since.committed.get(tp, -1) and now < ends.get(tp, 0):
                    return False
            return True

        return self.monitor.wait_for(
            lambda: f"every partition committing again\n{self.logs()}\n{self.progress()}",
            moving,
            since.at,
            timeout,
        )

    def progress(self) -> str:
        """Per partition: committed offset and produced end; records found in the stream
        and expected from the events produced so far (is it processing, or only not
        committing?); and what each live worker counted."""
        if self.load is None or self.monitor is None or not self.monitor.samples:
            return ""
        partition_of: dict[str, int] = {}
        expected: Counter[int] = Counter()
        for event in list(self.load.sent):
            partition_of[event.profile] = event.partition
            expected[event.partition] += event.kind in EXPECTED_KINDS
        reader = StreamReader(self.kinesis, self.streams[0])
        reader.poll()
        found: Counter[int] = Counter()
        for key, _ in reader.records:
            profile = key.removeprefix("ecid-")
            found[partition_of.get(profile, -1)] += 1
        last = self.monitor.samples[-1]
        lines = ["partition: committed/produced, records found/expected"]
        for p in range(PARTITIONS):
            tp = (self.q_topic, p)
            lines.append(
                f"  {p}: {last.committed.get(tp, -1)}/{self.load.ends.get(tp, 0)}, "
                f"{found[p]}/{expected[p]}"
            )
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(OSError):
                    lines.append(
                        f"  {worker.name} kd_events_total {worker.metric('kd_events_total')}"
                    )
        return "\n".join(lines)


# -- the workload and what must come out -----------------------------------------------


def email(profile: str) -> str:
    return f"{profile}@scale.example"


def expected_records(profile: str) -> dict[str, dict[str, Any]]:
    def record(ups: dict[str, Any]) -> dict[str, Any]:
        return {
            "person": {"email": email(profile)},
            "segmentMembership": {"ups": ups},
            "identityMap": ecid(profile),
        }

    return {
        "enter_a": record({SEG_A: {"lastQualificationTime": T_ENTER_A, "status": "realized"}}),
        "enter_b": record(
            {
                SEG_A: {"lastQualificationTime": T_ENTER_A, "status": "existing"},
                SEG_B: {"lastQualificationTime": T_ENTER_B, "status": "realized"},
            }
        ),
        "leave_b": record(
            {
                SEG_A: {"lastQualificationTime": T_AGAIN, "status": "existing"},
                SEG_B: {"lastQualificationTime": T_AGAIN, "status": "exited"},
            }
        ),
        "exit": record({SEG_A: {"lastQualificationTime": T_EXIT, "status": "exited"}}),
    }


def qualifications_plan(q_topic: str, profiles: Sequence[str]) -> list[tuple[str, str, str, bytes]]:
    plan: list[tuple[str, str, str, bytes]] = []
    for slot in range(len(profiles) + 2 * LAG):
        if slot < len(profiles):
            p = profiles[slot]
            plan.append((q_topic, "enter_a", p, qualification(p, SEG_A, "realized", T_ENTER_A)))
            plan.append((q_topic, "enter_b", p, qualification(p, SEG_B, "existing", T_ENTER_B)))
        if 0 <= slot - LAG < len(profiles):
            p = profiles[slot - LAG]
            plan.append((q_topic, "again", p, qualification(p, SEG_A, "realized", T_AGAIN)))
            plan.append((q_topic, "leave_b", p, qualification(p, SEG_B, "exited", T_AGAIN)))
        if 0 <= slot - 2 * LAG < len(profiles):
            p = profiles[slot - 2 * LAG]
            plan.append((q_topic, "exit", p, qualification(p, SEG_A, "exited", T_EXIT)))
    return plan


def order_problem(kinds: Sequence[str]) -> str | None:
    """None when the records are the expected ones in order, allowing replays: each
    record is the next expected one, or a restart at or before it (a re-sent tail)."""
    if not kinds:
        return "no record"
    last = -1
    for kind in kinds:
        if kind not in EXPECTED_KINDS:
            return f"unexpected record {kind}"
        index = EXPECTED_KINDS.index(kind)
        if index > last + 1:
            return f"{kind} before {EXPECTED_KINDS[last + 1]}"
        last = index
    if last != len(EXPECTED_KINDS) - 1 or len(set(kinds)) != len(EXPECTED_KINDS):
        return f"incomplete: {list(kinds)}"
    return None


async def _changelog_entries(
    bootstrap: str, topic: str, partition: int, keys: set[bytes]
) -> list[tuple[int, bytes, bytes | None]]:
    """(offset, key, value) of a changelog partition's messages whose key contains one of
    ``keys``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[tuple[int, bytes, bytes | None]] = []
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            for messages in (await consumer.getmany(tp, timeout_ms=1000)).values():
                found.extend(
                    (m.offset, m.key, m.value)
                    for m in messages
                    if m.key is not None and any(k in m.key for k in keys)
                )
    finally:
        await consumer.stop()
    return found


def diagnose(
    scaled: Scaled,
    profiles: Sequence[str],
    sent: Sequence[Sent],
    changes: Sequence[Change],
    records: Sequence[tuple[str, dict[str, Any]]],
    started: float,
) -> str:
    """What happened to some profiles: their events, who committed them when, their
    records, and their changelog entries."""
    assert scaled.monitor is not None
    samples = list(scaled.monitor.samples)
    lines = ["[diagnosis] times in s from the load start; changes:"]
    for change in changes:
        assigned = change.assigned.at - started if change.assigned else float("nan")
        lines.append(
            f"  {change.name} {change.worker}: fired {change.fired_at - started:.1f}, "
            f"assigned {assigned:.1f}, owners before {change.owners_before}, "
            f"after {change.owners_after}"
        )
    for profile in profiles:
        mine = [e for e in sent if e.profile == profile]
        partition = mine[0].partition if mine else -1
        lines.append(f"[diagnosis] {profile}: partition {partition}")
        for event in mine:
            committed = next(
                (
                    s
                    for s in samples
                    if s.committed.get((event.topic, event.partition), -1) > event.offset
                ),
                None,
            )
            owner = "?"
            if committed is not None:
                member = committed.owners(scaled.q_topic).get(event.partition)
                owner = scaled.member_of.get(member or "", "?")
            when = f"{committed.at - started:.1f} ({owner})" if committed else "never"
            lines.append(
                f"  {event.kind:8} offset {event.offset:6} sent {event.sent_at - started:6.1f}"
                f" committed by {when}"
            )
        for key, record in records:
            if key in (profile, f"ecid-{profile}"):
                lines.append(f"  record key={key}: {orjson.dumps(record).decode()}")
        for topic in (
            f"{scaled.name}-profiles-changelog",
            f"{scaled.name}-memberships-changelog",
            f"{scaled.name}-dlq",
        ):
            entries = run_sync(
                _changelog_entries(
                    scaled.stack.kafka_bootstrap, topic, partition, {profile.encode()}
                )
            )
            for offset, raw, value in entries:
                lines.append(f"  {topic}[{partition}]@{offset} {raw!r}: {value!r}")
    return "\n".join(lines)


def test_partitions_and_state_move_between_workers(
    stack: Stack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    report: Report,
) -> None:
    """2 workers, a 3rd joins, one stops (SIGTERM), one dies (SIGKILL), all mid-stream:
    partitions move, balanced; state moves with them; nothing lost or out of order;
    repeats only of events not committed at a change."""
    test_started = time.monotonic()
    scaled = Scaled(stack, tmp_path)
    load: LoadProducer | None = None
    try:
        scaled.create()
        monitor = scaled.monitor
        assert monitor is not None
        profiles = [f"sc-{i:05d}" for i in range(PROFILES)]

        # Two workers, one after the other: tells their group member ids apart.
        w1 = scaled.worker("w1")
        since = time.monotonic()
        w1.start()
        first = scaled.settle(1, set(), since)
        scaled.member_of[next(iter(first.members))] = "w1"
        w2 = scaled.worker("w2")
        since = time.monotonic()
        w2.start()
        two = scaled.settle(2, set(scaled.member_of), since)
        (id2,) = set(two.members) - set(scaled.member_of)
        scaled.member_of[id2] = "w2"
        layouts = {"2 workers": scaled.layout(two)}

        # Profile updates first, all committed: then every entry carries the email.
        updates = run_sync(
            produce_recorded(
                stack.kafka_bootstrap,
                [
                    (
                        scaled.p_topic,
                        "update",
                        p,
                        profile_update(p, {"person": {"email": email(p)}}, ecid(p)),
                    )
                    for p in profiles
                ],
            )
        )
        partition_of = {s.profile: s.partition for s in updates}
        update_ends: dict[tuple[str, int], int] = {}
        for s in updates:
            update_ends[(s.topic, s.partition)] = max(
                update_ends.get((s.topic, s.partition), 0), s.offset + 1
            )
        assert len(update_ends) == PARTITIONS, "the profiles cover every partition"
        monitor.wait_for(
            lambda: f"profile updates committed\n{scaled.logs()}",
            lambda s: all(s.committed.get(tp, -1) >= end for tp, end in update_ends.items()),
            time.monotonic(),
            120,
        )

        plan = qualifications_plan(scaled.q_topic, profiles)
        gates = [(int(gate * len(plan)), threading.Event()) for _, _, gate in CHANGES]
        load = scaled.load = LoadProducer(stack.kafka_bootstrap, plan, RATE, gates)
        load_started = time.monotonic()
        load.start()

        changes: list[Change] = []
        owners_now = scaled.owners(two)
        alive = {"w1": w1, "w2": w2}
        for (name, fire_at, _), (_, opened) in zip(CHANGES, gates, strict=True):
            deadline = time.monotonic() + 180
            while len(load.sent) < fire_at * len(plan):
                assert load.error is None, repr(load.error)
                assert time.monotonic() < deadline, "the load stalled"
                time.sleep(0.05)
            before = monitor.sample_now()
            if name == "join":
                worker = scaled.worker("w3")
                fired_at = time.monotonic()
                worker.start(wait_ready=False)
                alive["w3"] = worker
            elif name == "sigterm":
                worker, fired_at = alive.pop("w1"), time.monotonic()
                assert worker.process is not None
                worker.process.terminate()
            else:
                worker, fired_at = alive.pop("w3"), time.monotonic()
                worker.kill()
            opened.set()
            change = Change(name, worker.name, fired_at, before, owners_now)
            keep = {m for m, n in scaled.member_of.items() if n in alive}
            settled = scaled.settle(len(alive), keep, fired_at)
            for member in set(settled.members) - set(scaled.member_of):
                scaled.member_of[member] = worker.name
            assert {scaled.member_of[m] for m in settled.members} == set(alive), (
                f"the group's members are the live workers: {scaled.layout(settled)}"
            )
            change.assigned = settled
            change.flowing = scaled.flowing(settled, load.ends, timeout=90)
            left = monitor.first_after(fired_at, left_state_of(before))
            change.broker_start = left.at if left is not None else None
            change.owners_after = owners_now = scaled.owners(settled)
            layouts[f"after {name} of {worker.name}"] = scaled.layout(settled)
            changes.append(change)
            if name == "sigterm":
                assert worker.process is not None
                assert worker.process.wait(60) == 0, worker.log()
                worker.stop()

        deadline = time.monotonic() + 240
        while not load.done:
            assert time.monotonic() < deadline, "the load did not finish"
            time.sleep(0.1)
        assert load.error is None, repr(load.error)
        load_s = time.monotonic() - load_started
        sent = load.sent
        assert len(sent) == len(plan)
        assert all(s.partition == partition_of[s.profile] for s in sent), "co-partitioned"

        # Everything consumed and committed by the last worker, then every record read.
        done = monitor.wait_for(
            lambda: f"every qualification committed\n{scaled.logs()}\n{scaled.progress()}",
            lambda s: all(s.committed.get(tp, -1) >= end for tp, end in load.ends.items()),
            time.monotonic(),
            120,
        )
        drained_s = done.at - load_started
        by_key: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + 60
        while True:
            # A fresh read each time: an incremental reader can miss records that the
            # endpoint appends while it reads.
            reader = StreamReader(scaled.kinesis, scaled.streams[0])
            reader.poll()
            by_key = {}
            for key, record in reader.records:
                by_key.setdefault(key, []).append(record)
            complete = sum(
                1 for p in profiles if len(by_key.get(f"ecid-{p}", [])) >= len(EXPECTED_KINDS)
            )
            if complete == len(profiles) or time.monotonic() > deadline:
                break
            time.sleep(1)

        # -- no loss, per-key order, state moved --------------------------------------
        where = {(s.profile, s.kind): s for s in sent}
        problems: dict[str, str] = {}
        repeats: list[Sent] = []
        unexpected: list[tuple[str, dict[str, Any]]] = []
        for p in profiles:
            wanted = expected_records(p)
            kinds = []
            for record in by_key.pop(f"ecid-{p}", []):
                kind = next((k for k, r in wanted.items() if r == record), "other")
                if kind == "other":
                    unexpected.append((p, record))
                kinds.append(kind)
            problem = order_problem(kinds)
            if problem is not None:
                problems[p] = problem
            repeats.extend(
                where[(p, k)]
                for k, n in Counter(kinds).items()
                if k in wanted
                for _ in range(n - 1)
            )
        if by_key or unexpected or problems:
            suspects = sorted({*by_key, *(p for p, _ in unexpected), *problems})[:5]
            diagnosis = diagnose(
                scaled, suspects, [*updates, *sent], changes, reader.records, load_started
            )
            (tmp_path / "diagnosis.txt").write_text(diagnosis)
            with capsys.disabled():
                print(f"\n{diagnosis}\n(also in {tmp_path / 'diagnosis.txt'})")
        assert not by_key, f"records for unknown keys: {list(by_key)[:5]}"
        assert not unexpected, (
            f"{len(unexpected)} records not among the expected ones (state not moved?): "
            f"{unexpected[:3]}"
        )
        assert not problems, f"{len(problems)} profiles wrong: {list(problems.items())[:5]}"

        # What the checks above covered: profiles on a partition that changed owner at
        # a change, with an event committed before it (by the previous owner) and the
        # next one produced after the new assignment (so handled by the new owner).
        def straddles(
            change: Change, partitions: set[int], p: str, before: str, after: str
        ) -> bool:
            assert change.assigned is not None
            partition = partition_of[p]
            return (
                partition in partitions
                and where[(p, before)].offset
                < change.before.committed.get((scaled.q_topic, partition), -1)
                and where[(p, after)].sent_at > change.assigned.at
            )

        moved: dict[str, Moved] = {}
        for change in changes:
            parts = {
                p for p in range(PARTITIONS) if change.owners_before[p] != change.owners_after[p]
            }
            moved[change.name] = Moved(
                partitions=len(parts),
                duplicates=sum(straddles(change, parts, p, "enter_b", "again") for p in profiles),
                exits=sum(straddles(change, parts, p, "enter_b", "exit") for p in profiles),
                exits_after_exit_b=sum(
                    straddles(change, parts, p, "leave_b", "exit") for p in profiles
                ),
            )

        # -- repeats: only of events not committed when a change happened ------------------
        def uncommitted(change: Change) -> list[Sent]:
            if change.name == "join":  # an eager rebalance revokes every partition
                scope, until = set(range(PARTITIONS)), change.assigned.at if change.assigned else 0
            else:  # only the leaving worker's partitions, only what it could have read
                scope = {p for p, n in change.owners_before.items() if n == change.worker}
                until = change.fired_at
            return [
                s
                for s in sent
                if s.partition in scope
                and s.offset >= change.before.committed.get((scaled.q_topic, s.partition), -1)
                and s.sent_at < until
            ]

        exposed = {c.name: uncommitted(c) for c in changes}
        explained: Counter[str] = Counter()
        unexplained: list[Sent] = []
        for repeat in repeats:
            cause = next((n for n, events in exposed.items() if repeat in events), None)
            if cause is None:
                unexplained.append(repeat)
            else:
                explained[cause] += 1
        bound = sum(len(events) for events in exposed.values())
        assert not unexplained, (
            f"{len(unexplained)} records repeated for events committed at every change: "
            f"{unexplained[:5]}"
        )
        assert len(repeats) <= bound

        # -- figures --------------------------------------------------------------------
        records = sum(len(EXPECTED_KINDS) for _ in profiles) + len(repeats)
        events = len(updates) + len(sent)
        lines = [
            f"[scaling] {PROFILES} profiles over {PARTITIONS} partitions: {events} events "
            f"({len(updates)} profile updates, {len(sent)} qualifications at ~{RATE:.0f}/s "
            f"over {load_s:.0f}s, production paused {load.paused_s:.1f}s at gates), "
            f"{records} records = {len(profiles) * len(EXPECTED_KINDS)} expected + "
            f"{len(repeats)} repeats; 0 lost, 0 out of order, 0 unexpected; all committed "
            f"{drained_s:.0f}s after the load started",
        ]
        lines += [f"[scaling] {label}: {layout}" for label, layout in layouts.items()]
        figures: dict[str, Any] = {"events": events, "records": records, "repeats": len(repeats)}
        for change in changes:
            assert change.assigned is not None
            assert change.flowing is not None
            m = moved[change.name]
            broker = (
                f", {change.assigned.at - change.broker_start:.1f}s from the group's rebalance"
                if change.broker_start is not None
                else ""
            )
            lines.append(
                f"[scaling] {change.name} {change.worker}: all {PARTITIONS} assigned after "
                f"{change.assigned.at - change.fired_at:.1f}s{broker}, every partition "
                f"committing after {change.flowing.at - change.fired_at:.1f}s; "
                f"{m.partitions} partitions moved; handled on state the previous owner "
                f"wrote: {m.duplicates} duplicate entries and {m.exits} exits after its "
                f"entries, {m.exits_after_exit_b} exits after its exit B; "
                f"{len(exposed[change.name])} events uncommitted, "
                f"{explained[change.name]} records repeated"
            )
            figures[change.name] = {
                "assigned_s": round(change.assigned.at - change.fired_at, 2),
                "flowing_s": round(change.flowing.at - change.fired_at, 2),
                "partitions_moved": m.partitions,
                "duplicates_on_moved_state": m.duplicates,
                "exits_on_moved_state": m.exits,
                "exits_after_exit_b_on_moved_state": m.exits_after_exit_b,
                "uncommitted": len(exposed[change.name]),
                "repeats": explained[change.name],
            }
        repairs = [line for w in scaled.workers for line in w.repairs()]
        assert not repairs, "a last-resort repair was needed:\n" + "\n".join(repairs)
        lines.append(f"[scaling] test took {time.monotonic() - test_started:.0f}s")
        report("scaling", figures, "\n" + "\n".join(lines))
        for name, m in moved.items():
            assert m.duplicates + m.exits > 0, f"{name}: no moved state exercised"
        assert any(m.exits_after_exit_b for m in moved.values()), "no exit after a moved exit B"
    finally:
        if load is not None:
            load.stop()
        for worker in scaled.workers:
            worker.stop()
        scaled.destroy()
