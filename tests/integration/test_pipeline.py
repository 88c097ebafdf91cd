"""The worker end to end: real Kafka broker, real Kinesis endpoint, `python -m worker run`.

Records are told apart by partition key: each test profile has its own ecid.
"Nothing was exported" is checked by a later event of the same profile that
does export: records of one key arrive in order, so the full list of that key's
records is exact once the marker's record is there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.harness import (
    PIPELINE_DESTINATIONS,
    SEG_A,
    SEG_B,
    SEG_C,
    SEG_UNMAPPED,
    Deployment,
    Report,
    cli,
    ecid,
    entered_then_left,
    seg_a_events,
    stalled,
    unique,
    ups,
)
from tests.support import (
    SEED_IDENTITY_MAP,
    ProxyThread,
    Stack,
    StreamReader,
    consume_all,
    profile_update,
    qualification,
    run_sync,
)

SEED_RECORD: dict[str, Any] = {
    "person": {"email": "yourstruly@adobe.con"},
    "segmentMembership": {
        "ups": {
            SEG_A: {"lastQualificationTime": "2020-05-25T21:24:39Z", "status": "exited"},
            SEG_B: {"lastQualificationTime": "2020-05-25T23:37:33Z", "status": "existing"},
        }
    },
    "identityMap": SEED_IDENTITY_MAP,
}


@pytest.fixture(scope="module")
def deployment(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    name = unique("it")
    found = Deployment(stack, name, tmp_path_factory.mktemp(name))
    found.create()
    worker = found.worker()
    worker.start()
    try:
        yield found
    finally:
        log = worker.log(200)
        worker.stop()
        found.destroy()
        print(log)


def test_seed_page_record_reproduced(deployment: Deployment) -> None:
    profile = "p-seed"
    key = SEED_RECORD["identityMap"]["ecid"][0]["id"]
    deployment.send(
        (
            "p",
            profile,
            profile_update(
                profile, {"person": {"email": "yourstruly@adobe.con"}}, SEED_RECORD["identityMap"]
            ),
        ),
        ("q", profile, qualification(profile, SEG_A, "realized", "2020-05-25T20:00:00Z")),
        ("q", profile, qualification(profile, SEG_B, "existing", "2020-05-25T23:37:33Z")),
        ("q", profile, qualification(profile, SEG_A, "exited", "2020-05-25T21:24:39Z")),
    )
    records = deployment.records(0, key, 3)
    assert len(records) == 3
    assert records[2] == SEED_RECORD
    assert ups(records[0]) == {
        SEG_A: {"lastQualificationTime": "2020-05-25T20:00:00Z", "status": "realized"}
    }
    assert ups(records[1])[SEG_B]["status"] == "realized"
    assert ups(records[1])[SEG_A]["status"] == "existing"


def test_every_row_of_the_membership_table(deployment: Deployment) -> None:
    profile = "p-rows"
    ids = ecid("rows")
    key = "ecid-rows"
    q = [
        ("realized", "2021-01-01T00:00:01Z"),  # not member + realized -> realized
        ("existing", "2021-01-01T00:00:02Z"),  # member + existing -> duplicate
        ("realized", "2021-01-01T00:00:03Z"),  # member + realized -> duplicate
        ("exited", "2021-01-01T00:00:05Z"),  # member + exited -> exited
        ("exited", "2021-01-01T00:00:06Z"),  # not member + exited -> nothing
        ("realized", "2021-01-01T00:00:04Z"),  # older than the last applied: stale
        ("existing", "2021-01-01T02:00:07+02:00"),  # not member + existing -> realized (00:00:07Z)
        ("exited", "2021-01-01T00:00:08Z"),  # member + exited -> exited
    ]
    deployment.wait_consumed()  # earlier tests' events are counted
    unmapped_before = deployment.workers[0].metric("kd_events_total", outcome="unmapped")
    stale_before = deployment.workers[0].metric("kd_events_total", outcome="stale")
    messages = [("p", profile, profile_update(profile, {}, ids))]
    messages += [("q", profile, qualification(profile, SEG_A, s, t)) for s, t in q]
    messages.insert(
        3, ("q", profile, qualification(profile, SEG_UNMAPPED, "realized", "2021-01-01T00:00:03Z"))
    )
    deployment.send(*messages)
    records = deployment.records(0, key, 4)
    assert [(ups(r)[SEG_A]["status"], ups(r)[SEG_A]["lastQualificationTime"]) for r in records] == [
        ("realized", "2021-01-01T00:00:01Z"),
        ("exited", "2021-01-01T00:00:05Z"),
        ("realized", "2021-01-01T00:00:07Z"),
        ("exited", "2021-01-01T00:00:08Z"),
    ]
    assert all(set(ups(r)) == {SEG_A} for r in records), "the unmapped segment never appears"
    worker = deployment.workers[0]
    # Events are counted once their batch is done, after its records are
    # accepted and its state is durable: a record can be read before that.
    deployment.wait_consumed()
    assert worker.metric("kd_events_total", outcome="unmapped") == unmapped_before + 1
    assert worker.metric("kd_events_total", outcome="stale") == stale_before + 1


def test_export_triggers(deployment: Deployment) -> None:
    profile = "p-triggers"
    key = "ecid-triggers"
    ids = ecid("triggers")
    more_ids = {**ids, "phone_sha256": [{"id": "ph-1"}]}
    deployment.send(
        (
            "p",
            profile,
            profile_update(
                profile, {"person": {"email": "a@x.io", "name": {"firstName": "Ana"}}}, ids
            ),
        ),
        ("q", profile, qualification(profile, SEG_A, "realized", "2021-02-01T00:00:00Z")),  # 1
        ("p", profile, profile_update(profile, {"person": {"email": "b@x.io"}})),  # 2: mapped
        (
            "p",
            profile,
            profile_update(profile, {"person": {"name": {"firstName": "Bia"}}}),
        ),  # not mapped here
        ("p", profile, profile_update(profile, {"loyalty": {"points": 10}})),  # unmapped anywhere
        ("p", profile, profile_update(profile, {"person": {"email": "b@x.io"}})),  # no change
        ("p", profile, profile_update(profile, None, more_ids)),  # 3: identities changed
        ("p", profile, profile_update(profile, None, more_ids)),  # same identities
        ("p", profile, profile_update(profile, {"person": {"email": None}})),  # 4: removed
        ("p", profile, None),  # 5: deleted -> exited
        ("q", profile, qualification(profile, SEG_A, "existing", "2021-02-02T00:00:00Z", ids)),  # 6
    )
    records = deployment.records(0, key, 6)
    assert len(records) == 6, records
    assert [ups(r)[SEG_A]["status"] for r in records] == [
        "realized",
        "existing",
        "existing",
        "existing",
        "exited",
        "realized",
    ]
    assert records[0]["person"] == {"email": "a@x.io"}
    assert records[1]["person"] == {"email": "b@x.io"}
    assert records[1]["identityMap"] == ids
    assert records[2]["identityMap"] == more_ids
    assert "person" not in records[3]
    # Deleted: exported once with what it had, then forgotten (the next entry is "realized").
    assert records[4]["identityMap"] == more_ids
    assert ups(records[4])[SEG_A]["lastQualificationTime"] == "2021-02-01T00:00:00Z"
    assert records[5]["identityMap"] == ids, "identities from the event once the profile is gone"
    # The second destination maps none of these segments: nothing went there.
    assert deployment.readers[deployment.streams[1]].for_key("ecid-triggers") == []


def test_two_destinations_get_their_own_records(deployment: Deployment) -> None:
    profile = "p-two"
    ids = {"ecid": [{"id": "ecid-two"}], "email_lc_sha256": [{"id": "mail-two"}]}
    deployment.send(
        (
            "p",
            profile,
            profile_update(
                profile,
                {
                    "person": {"email": "t@x.io", "name": {"firstName": "Tia"}},
                    "loyalty": {"tier": "gold"},
                },
                ids,
            ),
        ),
        ("q", profile, qualification(profile, SEG_B, "realized", "2021-03-01T00:00:00Z")),
        ("q", profile, qualification(profile, SEG_C, "realized", "2021-03-01T00:00:01Z")),
    )
    first = deployment.records(0, "ecid-two", 1)
    second = deployment.records(1, "mail-two", 2)
    assert first == [
        {
            "person": {"email": "t@x.io"},
            "segmentMembership": {
                "ups": {
                    SEG_B: {"lastQualificationTime": "2021-03-01T00:00:00Z", "status": "realized"}
                }
            },
            "identityMap": ids,
        }
    ]
    assert second[0] == {
        "person": {"name": {"firstName": "Tia"}},
        "loyalty": {"tier": "gold"},
        "segmentMembership": {
            "ups": {
                SEG_B: {
                    "lastQualificationTime": "2021-03-01T00:00:00Z",
                    "status": "realized",
                    "name": "Downloaded the white paper",
                    "createdAt": 1590000000000,
                    "updatedAt": 1590000001000,
                    "mappingCreatedAt": 1590000002000,
                    "mappingUpdatedAt": 1590000003000,
                }
            }
        },
        "identityMap": ids,
    }
    assert ups(second[1])[SEG_B]["status"] == "existing"
    assert ups(second[1])[SEG_C] == {
        "lastQualificationTime": "2021-03-01T00:00:01Z",
        "status": "realized",
        "name": "Second only",
    }
    assert len(deployment.records(0, "ecid-two", 2, timeout=1)) == 1, "SEG_C is not the seed's"


def test_identities_from_the_event_or_none(deployment: Deployment) -> None:
    deployment.send(
        (
            "q",
            "p-event-ids",
            qualification(
                "p-event-ids", SEG_A, "realized", "2021-04-01T00:00:00Z", ecid("from-event")
            ),
        ),
        ("q", "p-no-ids", qualification("p-no-ids", SEG_A, "realized", "2021-04-01T00:00:00Z")),
    )
    assert deployment.records(0, "ecid-from-event", 1)[0]["identityMap"] == ecid("from-event")
    assert deployment.records(0, "p-no-ids", 1)[0]["identityMap"] == {}


def test_bad_events_go_to_the_dead_letter_topic(deployment: Deployment) -> None:
    profile = "p-bad"
    deployment.send(
        ("q", profile, b"{not json"),
        ("q", profile, qualification("someone-else", SEG_A, "realized", "2021-05-01T00:00:00Z")),
        (
            "q",
            profile,
            orjson.dumps(
                {
                    "profileId": profile,
                    "segmentId": SEG_A,
                    "status": "maybe",
                    "qualificationTime": "2021-05-01T00:00:00Z",
                }
            ),
        ),
        ("p", profile, b"[1, 2]"),
        (
            "q",
            profile,
            qualification(profile, SEG_A, "realized", "2021-05-01T00:00:00Z", ecid("bad")),
        ),
    )
    assert len(deployment.records(0, "ecid-bad", 1)) == 1, "the worker went on"
    letters = run_sync(consume_all(deployment.stack.kafka_bootstrap, deployment.dlq_topic, 4))
    mine = [orjson.loads(m.value) for m in letters if m.key == profile.encode()]
    assert sorted(letter["reason"] for letter in mine) == [
        "invalid_json",
        "invalid_status",
        "key_mismatch",
        "not_an_object",
    ]
    first = next(letter for letter in mine if letter["reason"] == "invalid_json")
    assert first["value"] == "{not json"
    assert first["source"]["topic"] == deployment.q_topic
    assert isinstance(first["source"]["offset"], int)


def test_an_exit_carries_the_identities_its_entry_carried(stack: Stack, tmp_path: Path) -> None:
    """Remembered identities (contract sections 1 and 3), across a restart that
    rebuilds the tables from their changelog: the exit, sent without identities,
    carries the entry's and lands under the same partition key."""
    with Deployment(stack, unique("it-remembered"), tmp_path, partitions=4) as deployment:
        worker = deployment.worker()
        worker.start()
        entry = qualification("p-rem", SEG_A, "realized", "2021-05-01T00:00:00Z", ecid("rem"))
        deployment.send(("q", "p-rem", entry))
        assert len(deployment.records(0, "ecid-rem", 1)) == 1
        assert worker.stop() == 0, worker.log()
        restarted = deployment.worker("restarted")  # a new data dir: the changelog only
        restarted.start()
        exit_ = qualification("p-rem", SEG_A, "exited", "2021-05-02T00:00:00Z")
        deployment.send(("q", "p-rem", exit_))
        entered, exited = deployment.records(0, "ecid-rem", 2)
        assert [ups(r)[SEG_A]["status"] for r in (entered, exited)] == ["realized", "exited"]
        assert entered["identityMap"] == exited["identityMap"] == ecid("rem")
        assert restarted.stop() == 0, restarted.log()


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_restart_recovers_state(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """memory:// rebuilds the tables from the changelog; rocksdb:// reopens them from disk."""
    with Deployment(stack, unique("it-restart"), tmp_path, partitions=4) as deployment:
        profiles = [f"r-{i:05d}" for i in range(2000)]
        worker = deployment.worker()
        worker.start()
        deployment.send(
            *[
                ("p", p, profile_update(p, {"person": {"email": f"{p}@x.io"}}, ecid(p)))
                for p in profiles
            ],
            *[
                ("q", p, qualification(p, SEG_A, "realized", "2021-06-01T00:00:00Z"))
                for p in profiles
            ],
        )
        assert len(deployment.records(0, f"ecid-{profiles[-1]}", 1, timeout=60)) == 1
        reader = deployment.readers[deployment.streams[0]]
        deadline = time.monotonic() + 60
        while len(reader.records) < len(profiles):
            reader.poll()
            assert time.monotonic() < deadline
        assert worker.stop() == 0, worker.log()

        restarted = deployment.worker("restarted", data_dir=worker.data_dir, store=store)
        restarted.start(wait_ready=False)
        recovery_s = restarted.wait_ready()
        # Duplicates after the restart export nothing; the marker exit does.
        deployment.send(
            *[
                ("q", p, qualification(p, SEG_A, "existing", "2021-06-02T00:00:00Z"))
                for p in profiles
            ],
            ("q", profiles[0], qualification(profiles[0], SEG_A, "exited", "2021-06-03T00:00:00Z")),
        )
        marker = deployment.records(0, f"ecid-{profiles[0]}", 2, timeout=60)
        assert [ups(r)[SEG_A]["status"] for r in marker] == ["realized", "exited"]
        assert marker[1]["person"] == {"email": f"{profiles[0]}@x.io"}, "profile table recovered"
        reader.poll()
        seen: dict[str, list[str]] = {}
        for key, record in reader.records:
            seen.setdefault(key, []).append(ups(record)[SEG_A]["status"])
        repeated = {k: v for k, v in seen.items() if len(v) > 1 and k != f"ecid-{profiles[0]}"}
        assert not repeated, (
            f"{len(repeated)} profiles exported again: {list(repeated.items())[:5]}"
        )
        assert len(reader.records) == len(profiles) + 1
        assert restarted.stop() == 0
        with capsys.disabled():
            print(f"\n[restart {store}] {len(profiles)} profiles: ready again in {recovery_s:.2f}s")


def test_refuses_topics_that_are_not_co_partitioned(stack: Stack, tmp_path: Path) -> None:
    copartitioned = Deployment(stack, unique("it-copart"), tmp_path, partitions=2, q_partitions=3)
    with copartitioned as deployment:
        worker = deployment.worker()
        worker.start(wait_ready=False)
        assert worker.process is not None
        code = worker.process.wait(60)
        assert code != 0
        assert "kafka.profiles_topic" in worker.log()
        assert "co-partitioned" in worker.log()


def test_bad_configuration_stops_at_start_naming_the_key(tmp_path: Path, stack: Stack) -> None:
    unused = Deployment(stack, "unused", tmp_path)
    config = unused.config()
    config["destinations"][0]["segmets"] = config["destinations"][0].pop("segments")
    result, _ = cli("run", "--config", str(unused.write_config("bad.yaml", config)))
    assert result.returncode == 2
    assert "destinations.0.segmets: unknown key" in result.stderr
    assert "destinations.0.segments: required key is missing" in result.stderr


def test_check_command(stack: Stack, tmp_path: Path) -> None:
    deployment = Deployment(stack, unique("it-check"), tmp_path)
    path = deployment.write_config("check.yaml")
    missing, _ = cli("check", "--config", str(path))
    assert missing.returncode == 1
    assert f"stream '{deployment.streams[0]}'" in missing.stderr
    assert "ResourceNotFoundException" in missing.stderr
    with deployment:
        result, _ = cli("check", "--config", str(path))
        assert result.returncode == 0, result.stderr
        assert "ACTIVE" in result.stdout


def test_killing_the_worker_loses_nothing(stack: Stack, tmp_path: Path, report: Report) -> None:
    """SIGKILL, then SIGTERM, mid-stream: each profile still gets realized then exited,
    and no restarted worker needed a last-resort repair (watchdog, hole replay)."""
    with Deployment(stack, unique("it-kill"), tmp_path, partitions=4) as deployment:
        profiles = [f"k-{i:05d}" for i in range(3000)]
        reader = deployment.readers[deployment.streams[0]]
        deployment.send(
            *seg_a_events(profiles, "realized", "2021-07-01T00:00:00Z"),
            *seg_a_events(profiles, "exited", "2021-07-02T00:00:00Z"),
        )
        workers = []
        figures: dict[str, float] = {}
        for round_ in range(3):
            worker = deployment.worker(f"worker-{round_}", batch_max_events=200)
            workers.append(worker)
            started = time.monotonic()
            worker.start()
            figures[f"round{round_}_ready_s"] = round(time.monotonic() - started, 2)
            if round_ < 2:
                # Kill once some records of this round have arrived.
                before = len(reader.records)
                deadline = time.monotonic() + 60
                while len(reader.records) < before + 500:
                    assert time.monotonic() < deadline, stalled(worker)
                    reader.poll()
                figures[f"round{round_}_500_records_s"] = round(time.monotonic() - started, 2)
                if round_ == 0:
                    worker.kill()
                else:
                    assert worker.stop() == 0, worker.log()
        received, violations = entered_then_left(deployment, profiles, timeout=120)
        assert violations == 0, f"{violations} keys out of order or incomplete"
        repairs = [line for w in workers for line in w.repairs()]
        assert not repairs, "a last-resort repair was needed:\n" + "\n".join(repairs)
        duplicates = received - 2 * len(profiles)
        figures["duplicates"] = duplicates
        report(
            "kill",
            figures,
            f"\n[kill] {2 * len(profiles)} exports expected, {received} received "
            f"after a SIGKILL and a SIGTERM: {duplicates} duplicates, 0 lost, 0 out of order, "
            f"no repair; ready after {figures['round1_ready_s']:.1f}s (after the SIGKILL) "
            f"and {figures['round2_ready_s']:.1f}s (after the SIGTERM)",
        )


def test_sigterm_finishes_in_flight_batches_and_commits(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SIGTERM mid-stream finishes what was taken: after the restart nothing repeats."""
    with Deployment(stack, unique("it-term"), tmp_path, partitions=4) as deployment:
        profiles = [f"t-{i:05d}" for i in range(6000)]
        deployment.send(*seg_a_events(profiles, "realized", "2021-08-01T00:00:00Z"))
        reader = StreamReader(deployment.kinesis, deployment.streams[0])
        worker = deployment.worker(batch_max_events=500)
        worker.start()
        deadline = time.monotonic() + 60
        while len(reader.records) < 1000:
            assert time.monotonic() < deadline, worker.log()
            reader.poll()
        started = time.monotonic()
        assert worker.stop() == 0, worker.log()
        stop_s = time.monotonic() - started
        deployment.worker("after").start()
        deadline = time.monotonic() + 120
        while True:
            reader = StreamReader(deployment.kinesis, deployment.streams[0])
            reader.poll()
            keys = [key for key, _ in reader.records]
            if len(set(keys)) == len(profiles) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(set(keys)) == len(profiles), "nothing lost"
        assert len(keys) == len(profiles), f"{len(keys) - len(profiles)} records sent twice"
        with capsys.disabled():
            print(f"\n[sigterm] stopped in {stop_s:.2f}s; {len(keys)} records, 0 duplicates")


def test_sigterm_during_an_outage_stops_within_the_deadline(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kinesis refuses everything, SIGTERM: the worker exits after shutdown_timeout_s
    with the batch unacknowledged, and the next worker delivers it."""
    with (
        Deployment(stack, unique("it-out"), tmp_path, partitions=2) as deployment,
        ProxyThread(stack.kinesis_endpoint) as proxy,
    ):
        profiles = [f"o-{i:04d}" for i in range(400)]
        worker = deployment.worker(endpoint_url=proxy.url, shutdown_timeout_s=3)
        worker.start()
        proxy.proxy.faults.outage_for(600)
        deployment.send(*seg_a_events(profiles, "realized", "2021-09-01T00:00:00Z"))
        time.sleep(3)  # the batch is taken and stuck in retries
        started = time.monotonic()
        assert worker.stop(timeout=30) == 0, worker.log()
        stop_s = time.monotonic() - started
        assert "unacknowledged events will be replayed" in worker.log(400)
        proxy.proxy.faults.clear()
        deployment.worker("after").start()
        deployment.wait_keys(len(profiles), 60, "records lost")
        with capsys.disabled():
            print(f"\n[outage+sigterm] stopped in {stop_s:.2f}s, {len(profiles)} records after")


def test_a_worker_that_completes_no_batch_fails_its_health_check(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kinesis refuses every put and the destinations are set never to park in
    time (park_after_s over the stall timeout: the batch waits, as it did before
    parking): past runtime.stall_timeout_s, /healthz answers 503 and
    kd_batch_stalled_seconds says for how long; once the stream accepts, the
    worker recovers by itself and delivers everything."""
    with (
        Deployment(stack, unique("it-stall"), tmp_path, partitions=2) as deployment,
        ProxyThread(stack.kinesis_endpoint) as proxy,
    ):
        for destination in deployment.destinations:
            destination["park_after_s"] = 600
        worker = deployment.worker(endpoint_url=proxy.url, stall_timeout_s=10)
        worker.start()
        assert worker.get("/healthz")[0] == 200
        proxy.proxy.faults.outage_for(600)
        profiles = [f"h-{i:04d}" for i in range(50)]
        deployment.send(*seg_a_events(profiles, "realized", "2021-09-01T00:00:00Z"))
        started = time.monotonic()
        while worker.get("/healthz")[0] == 200:
            assert time.monotonic() - started < 60, "/healthz stayed 200"
            time.sleep(0.5)
        failed_after = time.monotonic() - started
        status, body = worker.get("/healthz")
        assert status == 503
        assert b"no batch completed" in body
        assert worker.metric("kd_batch_stalled_seconds") > 10
        proxy.proxy.faults.clear()
        deployment.wait_keys(len(profiles), 60, "records lost after the outage")
        deadline = time.monotonic() + 10
        while worker.get("/healthz")[0] != 200:
            assert time.monotonic() < deadline, "/healthz did not recover"
            time.sleep(0.2)
        assert worker.metric("kd_batch_stalled_seconds") == 0
        with capsys.disabled():
            print(f"\n[stall] /healthz 503 {failed_after:.1f}s after the outage began")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_stays_flat_during_a_throttling_storm(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kinesis throttles every record for 60 s while events keep coming: the worker
    stops reading at its buffer bound, its RSS stays flat, and nothing is lost.
    The destinations are set never to park in time (park_after_s over the storm):
    this is the bound while a batch waits for its streams (parked, the worker
    would go on reading and its tables grow with the new profiles)."""
    buffer = 4 * 1024 * 1024
    with (
        Deployment(stack, unique("it-storm"), tmp_path, partitions=2) as deployment,
        ProxyThread(stack.kinesis_endpoint) as proxy,
    ):
        for destination in deployment.destinations:
            destination["park_after_s"] = 300
        # Many events per batch: the byte bound, not the event count, must hold.
        worker = deployment.worker(
            endpoint_url=proxy.url, max_buffer_bytes=buffer, batch_max_events=50_000
        )
        worker.start()
        assert worker.process is not None
        pid = worker.process.pid
        proxy.proxy.faults.throttle_share = 1.0
        profiles = [f"s-{i:05d}" for i in range(40_000)]
        deployment.send(*seg_a_events(profiles, "realized", "2021-10-01T00:00:00Z"))
        samples: list[int] = []
        buffered: list[float] = []
        storm_started = time.monotonic()
        while time.monotonic() - storm_started < 60:
            samples.append(_rss_bytes(pid))
            buffered.append(worker.metric("kd_buffered_bytes"))
            time.sleep(1)
        baseline = samples[5]
        growth = max(samples[5:]) - baseline
        assert max(buffered) <= buffer + 1024, "the input buffer stays within its bound"
        assert growth < buffer + 32 * 1024 * 1024, f"RSS grew {growth / 2**20:.1f} MiB"
        proxy.proxy.faults.clear()
        deployment.wait_keys(len(profiles), 120, "records lost after the storm", interval=0.5)
        with capsys.disabled():
            print(
                f"\n[storm] 60 s of 100% throttling, {len(profiles)} events: RSS "
                f"{baseline / 2**20:.0f} MiB -> max {max(samples[5:]) / 2**20:.0f} MiB "
                f"(+{growth / 2**20:.1f} MiB), buffer max {max(buffered) / 2**20:.2f} MiB "
                f"of {buffer / 2**20:.0f}; all delivered after"
            )


def test_end_to_end_through_throttling_an_outage_and_dropped_connections(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """20,000 exports through the worker while Kinesis throttles 30% of records,
    fails 5%, drops 2% of connections after writing, and is down for 20 s."""
    with (
        Deployment(stack, unique("it-e2e"), tmp_path, partitions=4) as deployment,
        ProxyThread(stack.kinesis_endpoint) as proxy,
    ):
        worker = deployment.worker(endpoint_url=proxy.url, batch_max_events=1000)
        worker.start()
        faults = proxy.proxy.faults
        faults.throttle_share, faults.internal_failure_share, faults.drop_share = 0.3, 0.05, 0.02
        profiles = [f"e-{i:05d}" for i in range(10_000)]
        deployment.send(
            *seg_a_events(profiles, "realized", "2021-11-01T00:00:00Z"),
            *seg_a_events(profiles, "exited", "2021-11-02T00:00:00Z"),
        )
        started = time.monotonic()
        time.sleep(3)
        faults.outage_for(20)
        received, violations = entered_then_left(deployment, profiles, timeout=240)
        elapsed = time.monotonic() - started
        assert violations == 0, f"{violations} keys out of order or incomplete"
        duplicates = received - 2 * len(profiles)
        counters = proxy.proxy.counters
        assert duplicates <= counters.records_in_dropped_calls, "only dropped replies repeat"
        with capsys.disabled():
            print(
                f"\n[e2e faults] {2 * len(profiles)} exports in {elapsed:.0f}s: "
                f"throttled {counters.records_throttled}, failed {counters.records_failed}, "
                f"dropped calls {counters.connections_dropped} "
                f"({counters.records_in_dropped_calls} records), outage refusals "
                f"{counters.outage_refused}; {duplicates} duplicates, 0 lost, 0 out of order"
            )


def test_a_record_kinesis_can_never_take_is_dead_lettered_and_the_worker_goes_on(
    stack: Stack, tmp_path: Path
) -> None:
    """A segment name of 1.1 MB (with "include segment names") makes a record over
    Kinesis's 1 MiB while the profile's stored state stays small: it goes to the
    dead-letter topic with reason record_too_large, cut to fit, and later events
    flow. (An identity map that large is refused before, as state_too_large: the
    qualification's identities are remembered in the profile table.)"""
    seed = PIPELINE_DESTINATIONS["seed"]
    huge_name = {
        "seed": {
            **seed,
            "include_segment_names": True,
            "segments": [{"id": SEG_A, "name": "n" * 1_100_000}, {"id": SEG_B}],
        }
    }
    with Deployment(
        stack, unique("it-big"), tmp_path, partitions=1, shards=1, destinations=huge_name
    ) as deployment:
        worker = deployment.worker()
        worker.start()

        async def send() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
            await producer.start()
            try:
                for profile, segment in (("p-big", SEG_A), ("p-after", SEG_B)):
                    value = qualification(
                        profile, segment, "realized", "2021-12-01T00:00:00Z", ecid(profile[2:])
                    )
                    await producer.send_and_wait(deployment.q_topic, value, key=profile.encode())
            finally:
                await producer.stop()

        run_sync(send())
        assert len(deployment.records(0, "ecid-after", 1, timeout=60)) == 1, worker.log()
        assert deployment.readers[deployment.streams[0]].for_key("ecid-big") == []
        letters = run_sync(consume_all(stack.kafka_bootstrap, deployment.dlq_topic, 1))
        body = orjson.loads(letters[0].value)
        assert body["reason"] == "record_too_large"
        assert body["destination"] == "Seed page"
        assert body["stream"] == deployment.streams[0]
        assert body["truncated"] is True
        assert body["size"] > 1024 * 1024
        assert body["source"]["topic"] == deployment.q_topic
