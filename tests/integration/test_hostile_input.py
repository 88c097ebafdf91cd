"""Hostile input on the real stack: each bad event is one bounded dead letter, nothing wedges.

The reproductions of issue 11, mixed into ordinary traffic: before the fix,
six of them stopped a worker for good (a dead letter Kafka refused, a state
write outside the per-event guard, a dead-lettered event whose membership was
stored anyway). Here every good record arrives, every bad event is exactly
one dead letter with its reason that fits Kafka's message limit, state changes
only for applied events, and commits reach the end offsets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from tests.integration.harness import (
    SEG_A,
    SEG_C,
    Deployment,
    ecid,
    entered_then_left,
    unique,
    ups,
    wait_committed_to_the_end,
)
from tests.support import Stack, consume_all, profile_update, qualification, run_sync

# A dead letter's key + value, as worker.deadletters.MAX_BYTES promises; Kafka's
# default limit (1,048,588 bytes a batch) is above it.
DEAD_LETTER_LIMIT = 1_000_000


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"n": value}
    return value


def deep_json(body: dict[str, Any]) -> bytes:
    """orjson refuses to write more than 255 levels; the standard library does not."""
    return json.dumps(body).encode()


def test_hostile_events_mixed_with_traffic_are_dead_lettered_and_nothing_wedges(
    stack: Stack, tmp_path: Path
) -> None:
    with Deployment(stack, unique("it-hostile"), tmp_path, partitions=2) as deployment:
        worker = deployment.worker(batch_max_events=200)
        worker.start()
        q, p = deployment.q_topic, deployment.p_topic
        profiles = [f"h-{i:04d}" for i in range(500)]
        when = "2021-08-01T00:00:00Z"
        later = "2021-08-02T00:00:00Z"
        deep_identity = {"ecid": [{"id": "ecid-bad-ident", "x": nested(300)}]}
        # (topic, key, value, the reason of its dead letter or None for a good event)
        bad: list[tuple[str, bytes, bytes, str]] = [
            (q, b"bad-nul", b"\x00" * 170_000, "invalid_json"),
            (
                q,
                b"bad-status",
                orjson.dumps(
                    {
                        "profileId": "bad-status",
                        "segmentId": SEG_A,
                        "status": "s" * 900_000,
                        "qualificationTime": when,
                    }
                ),
                "invalid_status",
            ),
            (q, b"k" * 450_000, qualification("bad-key", SEG_A, "realized", when), "key_mismatch"),
            (
                q,
                b"bad-ident",
                deep_json(
                    {
                        "profileId": "bad-ident",
                        "segmentId": SEG_C,
                        "status": "realized",
                        "qualificationTime": when,
                        "identityMap": deep_identity,
                    }
                ),
                "unencodable",
            ),
            (q, b"bad-bytes", b"\xff\xfe" * 150_000, "invalid_json"),
        ]
        # Ordinary traffic with the bad events spread through it: every profile
        # enters SEG_A, then leaves it (1,000 good events, 1,000 records).
        first_run: list[tuple[str, bytes, bytes]] = []
        for i, profile in enumerate(profiles):
            if i % 100 == 50:
                topic, key, value, _ = bad[i // 100]
                first_run.append((topic, key, value))
            first_run.append(
                (
                    q,
                    profile.encode(),
                    qualification(profile, SEG_A, "realized", when, ecid(profile)),
                )
            )
        for profile in profiles:
            first_run.append(
                (q, profile.encode(), qualification(profile, SEG_A, "exited", later, ecid(profile)))
            )
        # The event dead-lettered for its identities changed nothing: the clean
        # replay is a realization, not a duplicate.
        first_run.append(
            (
                q,
                b"bad-ident",
                qualification("bad-ident", SEG_C, "realized", when, ecid("bad-ident")),
            )
        )
        deployment.send_raw(first_run)
        deployment.wait_consumed()

        # State writes: an update nested 300 deep, then two 600 KB updates of one
        # profile whose sum would be a 1.2 MB changelog message.
        updates = [
            (p, b"bad-deep", deep_json({"profileId": "bad-deep", "attributes": nested(300)})),
            (p, b"bad-big", profile_update("bad-big", {"loyalty": {"tier": "t" * 600_000}})),
            (
                p,
                b"bad-big",
                profile_update("bad-big", {"person": {"name": {"firstName": "f" * 600_000}}}),
            ),
        ]
        deployment.send_raw(updates)
        deployment.wait_consumed()
        markers = [
            (q, b"bad-big", qualification("bad-big", SEG_C, "realized", when)),
            (q, b"bad-deep", qualification("bad-deep", SEG_C, "realized", when)),
        ]
        deployment.send_raw(markers)

        # Every good record, in order per profile.
        received, violations = entered_then_left(deployment, profiles, timeout=90)
        assert violations == 0, f"{violations} profiles incomplete or out of order"
        assert received >= 2 * len(profiles)

        # State changed only for applied events.
        [replayed] = deployment.records(1, "bad-ident", 1, timeout=30)
        assert ups(replayed)[SEG_C]["status"] == "realized"
        assert replayed["identityMap"] == ecid("bad-ident")
        [big] = deployment.records(1, "bad-big", 1, timeout=30)
        assert big["loyalty"]["tier"] == "t" * 600_000, "the first 600 KB update was applied"
        assert "person" not in big, "the update dead-lettered as state_too_large changed nothing"
        [deep] = deployment.records(1, "bad-deep", 1, timeout=30)
        assert "loyalty" not in deep
        assert "person" not in deep

        # One bounded dead letter per bad event, with its reason.
        expected = {
            **{key[:16]: reason for _, key, _, reason in bad},
            b"bad-deep": "unencodable",
            b"bad-big": "state_too_large",
        }
        letters = run_sync(
            consume_all(stack.kafka_bootstrap, deployment.dlq_topic, len(expected) + 1, wait_s=5)
        )
        assert len(letters) == len(expected), [m.key[:16] for m in letters]
        for letter in letters:
            assert len(letter.key or b"") + len(letter.value) < DEAD_LETTER_LIMIT
        found = {m.key[:16]: orjson.loads(m.value) for m in letters}
        assert {key: body["reason"] for key, body in found.items()} == expected
        nul = found[b"bad-nul"]
        assert nul["truncated"] is True
        assert nul["size"] == 170_000
        assert nul["value"].startswith("\x00")
        status = found[b"bad-status"]
        assert len(status["detail"]) <= 1000, "detail quotes the status, cut"
        key_mismatch = found[b"k" * 16]
        assert key_mismatch["keyTruncated"] is True
        assert key_mismatch["keySize"] == 450_000
        raw = found[b"bad-bytes"]
        assert "value" not in raw
        assert raw["valueBase64"].startswith("//7/")
        assert "truncated" not in raw, "300 KB of base64 fits whole"

        wait_committed_to_the_end(deployment, worker, timeout=60)
        assert worker.metric("kd_batch_failures_total") == 0, "each bad event was one dead letter"
        status_code, _ = worker.get("/healthz")
        assert status_code == 200
