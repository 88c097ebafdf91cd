"""`make demo`: the worker on the local stack with sample data, checked end to end.

1. Re-creates the demo's topics and streams (config/demo.yaml), so every run starts clean.
2. Starts the worker (`python -m worker run`) and waits until /readyz answers 200.
3. Feeds ~3,000 profiles and their segment qualifications, attribute and identity
   changes, deletions and a few bad events, computing meanwhile what the worker must
   send (CONTRACT sections 2 and 3).
4. Waits until the worker has handled every event (/metrics) and measures events/s.
5. Reads both streams and the dead-letter topic back and compares them with the
   expectation, record by record.
6. Stops the worker and deletes the demo's topics and streams, also on failure or Ctrl-C.

The feed comes in three waves (profiles, then qualifications, then profile changes),
each one handled completely before the next is produced: the two input topics are not
ordered against each other, so an attribute change racing a segment entry of the same
profile could be exported or not. Inside a wave, one profile's events share a
partition and keep their order, so the expectation is certain.

Environment: KAFKA_BOOTSTRAP (127.0.0.1:9092), KINESIS_ENDPOINT (http://127.0.0.1:4567).
Exit code 0 when the streams and the dead-letter topic hold exactly what was expected.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import boto3
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "demo.yaml"
WORKER_LOG = REPO / ".stack" / "demo-worker.log"
WEB_PORT = 6066
BASE_URL = f"http://127.0.0.1:{WEB_PORT}"
PARTITIONS = 4
SHARDS = 2
SEED = 20250301
PROFILES = 3000
UNMAPPED_SEGMENT = "c3f1e8d2-newsletter-subscribers"  # no destination maps it
AWS = {"aws_access_key_id": "demo", "aws_secret_access_key": "demo", "region_name": "us-east-1"}
READY_TIMEOUT_S = 90.0
PHASE_TIMEOUT_S = 90.0
STALL_TIMEOUT_S = 15.0

Json = dict[str, Any]
Identities = dict[str, list[dict[str, str]]]


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


# -- configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentInfo:
    id: str
    extras: Json  # name / timestamps as the record carries them


@dataclass(frozen=True)
class DestinationInfo:
    name: str
    stream: str
    namespaces: tuple[str, ...]
    segments: tuple[SegmentInfo, ...]
    attributes: tuple[tuple[str, ...], ...]

    def maps(self, segment_id: str) -> bool:
        return any(segment.id == segment_id for segment in self.segments)


@dataclass(frozen=True)
class DemoConfig:
    app_id: str
    qualifications_topic: str
    profiles_topic: str
    dlq_topic: str
    destinations: tuple[DestinationInfo, ...]

    @property
    def topics(self) -> list[str]:
        return [self.qualifications_topic, self.profiles_topic, self.dlq_topic]

    def mapped_segments(self) -> list[str]:
        ids: list[str] = []
        for destination in self.destinations:
            ids.extend(s.id for s in destination.segments if s.id not in ids)
        return ids


def load_config(path: Path) -> DemoConfig:
    raw: Json = yaml.safe_load(path.read_text(encoding="utf-8"))
    kafka: Json = raw["kafka"]
    destinations = []
    for d in raw["destinations"]:
        segments = []
        for s in d["segments"]:
            extras: Json = {}
            if d.get("include_segment_names") and s.get("name") is not None:
                extras["name"] = s["name"]
            if d.get("include_segment_timestamps"):
                for key, name in (
                    ("created_at", "createdAt"),
                    ("updated_at", "updatedAt"),
                    ("mapping_created_at", "mappingCreatedAt"),
                    ("mapping_updated_at", "mappingUpdatedAt"),
                ):
                    if s.get(key) is not None:
                        extras[name] = s[key]
            segments.append(SegmentInfo(s["id"], extras))
        destinations.append(
            DestinationInfo(
                name=d["name"],
                stream=d["stream"],
                namespaces=tuple(d.get("partition_key_namespaces") or ()),
                segments=tuple(segments),
                attributes=tuple(tuple(a.split(".")) for a in d.get("attributes") or ()),
            )
        )
    return DemoConfig(
        app_id=raw["app_id"],
        qualifications_topic=kafka["qualifications_topic"],
        profiles_topic=kafka["profiles_topic"],
        dlq_topic=kafka["dlq_topic"],
        destinations=tuple(destinations),
    )


# -- the model: what the worker must send (CONTRACT sections 2 and 3) ------------------

_MISSING = object()


def get_path(tree: Json, path: Sequence[str]) -> Any:
    node: Any = tree
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def merge(stored: Json, patch: Json) -> Json:
    """A partial update deep-merged into the stored attributes; null removes a leaf."""
    out = copy.deepcopy(stored)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            current = out.get(key)
            merged = merge(current if isinstance(current, dict) else {}, value)
            if merged:
                out[key] = merged
            else:
                out.pop(key, None)
        else:
            out[key] = value
    return out


def project(attributes: Json, paths: Sequence[Sequence[str]]) -> Json:
    result: Json = {}
    for path in paths:
        value = get_path(attributes, path)
        if value is _MISSING:
            continue
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = copy.deepcopy(value)
    return result


def aep_time(t: datetime) -> str:
    u = t.astimezone(UTC)
    return f"{u:%Y-%m-%dT%H:%M:%S}Z"


def partition_key(identities: Identities, namespaces: Sequence[str], profile_id: str) -> str:
    for namespace in namespaces:
        for identity in identities.get(namespace) or []:
            if identity.get("id"):
                key = identity["id"]
                return hashlib.sha256(key.encode()).hexdigest() if len(key) > 256 else key
    return profile_id


@dataclass
class ProfileState:
    attributes: Json
    identities: Identities
    members: dict[str, tuple[bool, datetime]] = field(default_factory=dict)


@dataclass(frozen=True)
class Expected:
    destination: int
    partition_key: str
    data: Json


@dataclass
class Model:
    config: DemoConfig
    profiles: dict[str, ProfileState] = field(default_factory=dict)
    records: list[Expected] = field(default_factory=list)
    dead_letters: Counter[str] = field(default_factory=Counter)
    # (topic, outcome) as the worker counts events in kd_events_total; informative only
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def _record(
        self, index: int, profile_id: str, state: ProfileState, changed: dict[str, str]
    ) -> bool:
        destination = self.config.destinations[index]
        ups: Json = {}
        for segment in destination.segments:
            member = state.members.get(segment.id)
            status = changed.get(segment.id)
            if status is None:
                if member is None or not member[0]:
                    continue
                status = "existing"
            assert member is not None
            ups[segment.id] = {
                "lastQualificationTime": aep_time(member[1]),
                "status": status,
                **segment.extras,
            }
        if not ups:
            return False
        data = project(state.attributes, destination.attributes)
        data["segmentMembership"] = {"ups": ups}
        data["identityMap"] = copy.deepcopy(state.identities)
        key = partition_key(state.identities, destination.namespaces, profile_id)
        self.records.append(Expected(index, key, data))
        return True

    def update(self, profile_id: str, patch: Json, identities: Identities | None) -> None:
        state = self.profiles.setdefault(profile_id, ProfileState({}, {}))
        before = state.attributes
        state.attributes = merge(before, patch)
        identities_changed = identities is not None and identities != state.identities
        if identities is not None:
            state.identities = copy.deepcopy(identities)
        exported = False
        for index, destination in enumerate(self.config.destinations):
            differs = any(
                get_path(before, p) != get_path(state.attributes, p) for p in destination.attributes
            )
            if identities_changed or differs:
                exported |= self._record(index, profile_id, state, {})
        self._count(self.config.profiles_topic, "exported" if exported else "no_export")

    def _count(self, topic: str, outcome: str) -> None:
        self.outcomes[topic, outcome] += 1

    def bad(self, topic: str, reason: str) -> None:
        self.dead_letters[reason] += 1
        self._count(topic, "dead_lettered")

    def qualify(self, profile_id: str, segment_id: str, status: str, when: datetime) -> None:
        topic = self.config.qualifications_topic
        if not any(d.maps(segment_id) for d in self.config.destinations):
            self._count(topic, "unmapped")  # ignored
            return
        state = self.profiles[profile_id]
        previous = state.members.get(segment_id)
        if previous is not None and when < previous[1]:
            self._count(topic, "stale")  # changes nothing
            return
        was_member = previous is not None and previous[0]
        is_member = status != "exited"
        state.members[segment_id] = (is_member, when)
        if is_member == was_member:
            self._count(topic, "duplicate" if is_member else "not_member")
            return
        self._count(topic, "exported")
        exported = "realized" if is_member else "exited"
        for index, destination in enumerate(self.config.destinations):
            if destination.maps(segment_id):
                self._record(index, profile_id, state, {segment_id: exported})

    def delete(self, profile_id: str) -> None:
        state = self.profiles.pop(profile_id)
        exported = False
        for index, destination in enumerate(self.config.destinations):
            changed = {
                s.id: "exited"
                for s in destination.segments
                if s.id in state.members and state.members[s.id][0]
            }
            if changed:
                exported |= self._record(index, profile_id, state, changed)
        self._count(self.config.profiles_topic, "exported" if exported else "deleted")


# -- the sample feed ---------------------------------------------------------------------

Message = tuple[str, bytes, bytes | None]  # topic, key, value


@dataclass(frozen=True)
class Wave:
    name: str
    messages: list[Message]
    records_after: int  # expected Kinesis records once the wave is handled


FIRST_NAMES = [
    "Ana", "Bruno", "Carla", "David", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas",
    "Kira", "Luis", "Maya", "Nils", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tara",
]  # fmt: skip
LAST_NAMES = [
    "Silva", "Müller", "Rossi", "Dubois", "Novak", "Jensen", "Garcia", "Kowalski",
    "Andersen", "Costa", "Nakamura", "Okafor", "Papadopoulos", "Schmidt", "Ivanova",
]  # fmt: skip
TIERS = ["bronze", "silver", "gold", "platinum"]
CITIES = ["Lisbon", "Berlin", "Milan", "Lyon", "Prague", "Aarhus", "Seville", "Kraków"]
T0 = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))


@dataclass
class Feed:
    config: DemoConfig
    rng: random.Random
    model: Model
    waves: list[Wave] = field(default_factory=list)

    def _time(self, when: datetime) -> str:
        roll = self.rng.random()
        if roll < 0.1:  # some producers send offsets, some fractions
            return when.astimezone(PLUS_TWO).isoformat()
        if roll < 0.2:
            return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _update(
        self,
        out: list[Message],
        profile_id: str,
        when: datetime,
        patch: Json,
        identities: Identities | None = None,
    ) -> None:
        body: Json = {"profileId": profile_id, "updateTime": self._time(when), "attributes": patch}
        if identities is not None:
            body["identityMap"] = identities
        out.append((self.config.profiles_topic, profile_id.encode(), json.dumps(body).encode()))
        self.model.update(profile_id, patch, identities)

    def _qualify(
        self, out: list[Message], profile_id: str, segment_id: str, status: str, when: datetime
    ) -> None:
        when = when.replace(microsecond=self.rng.choice([0, 0, 250_000, 999_000]))
        sent = self._time(when)
        body: Json = {
            "profileId": profile_id,
            "segmentId": segment_id,
            "status": status,
            "qualificationTime": sent,
        }
        if self.rng.random() < 0.5:  # optional; the profile table's identities win
            body["identityMap"] = self.model.profiles[profile_id].identities
        out.append(
            (self.config.qualifications_topic, profile_id.encode(), json.dumps(body).encode())
        )
        # The worker sees the time as sent (a fraction may be left out).
        self.model.qualify(profile_id, segment_id, status, datetime.fromisoformat(sent))

    def _bad(self, out: list[Message], topic: str, key: str, value: bytes, reason: str) -> None:
        out.append((topic, key.encode(), value))
        self.model.bad(topic, reason)

    def build(self) -> None:
        rng = self.rng
        ids = [f"p-{n:05d}" for n in range(1, PROFILES + 1)]

        # Wave 1: every profile once, with its identities (some have no ecid).
        wave: list[Message] = []
        for n, profile_id in enumerate(ids):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            email = f"{first}.{last}.{n}@example.com".lower()
            attributes: Json = {
                "person": {"name": {"firstName": first, "lastName": last}},
                "personalEmail": {"address": email},
                "homeAddress": {"city": rng.choice(CITIES)},
            }
            if rng.random() < 0.85:
                attributes["loyalty"] = {"tier": rng.choice(TIERS)}
            identities: Identities = {
                "email_lc_sha256": [{"id": hashlib.sha256(email.encode()).hexdigest()}]
            }
            if rng.random() < 0.8:
                identities["ecid"] = [{"id": str(rng.randrange(10**37, 10**38))}]
            self._update(wave, profile_id, T0 - timedelta(days=1), attributes, identities)
        self.waves.append(Wave("profiles", wave, len(self.model.records)))

        # Wave 2: qualifications: entries, duplicates, stale events, exits, re-entries.
        segments = [*self.config.mapped_segments(), UNMAPPED_SEGMENT]
        odds = dict.fromkeys(segments, 0.4)
        wave = []
        entered: list[tuple[str, str, datetime]] = []
        for profile_id in ids:
            for segment_id in segments:
                if rng.random() < odds[segment_id]:
                    when = T0 + timedelta(seconds=rng.randrange(3600))
                    self._qualify(
                        wave, profile_id, segment_id, rng.choice(["realized", "existing"]), when
                    )
                    entered.append((profile_id, segment_id, when))
        latest: dict[tuple[str, str], datetime] = {}
        for profile_id, segment_id, when in entered:
            latest[profile_id, segment_id] = when
            roll = rng.random()
            if roll < 0.15:  # the same status again, later: a duplicate
                later = when + timedelta(seconds=rng.randrange(60, 900))
                self._qualify(
                    wave, profile_id, segment_id, rng.choice(["realized", "existing"]), later
                )
                latest[profile_id, segment_id] = later
            elif roll < 0.18:  # an exit from before the entry: stale
                older = when - timedelta(seconds=rng.randrange(60, 7200))
                self._qualify(wave, profile_id, segment_id, "exited", older)
        exited: list[tuple[str, str]] = []
        for profile_id, segment_id in latest:
            if rng.random() < 0.3:
                later = T0 + timedelta(hours=2, seconds=rng.randrange(3600))
                self._qualify(wave, profile_id, segment_id, "exited", later)
                exited.append((profile_id, segment_id))
        for profile_id in rng.sample(ids, 300):  # exits of segments they are not in
            segment_id = rng.choice(segments)
            if (profile_id, segment_id) not in latest:
                when = T0 + timedelta(hours=2, seconds=rng.randrange(3600))
                self._qualify(wave, profile_id, segment_id, "exited", when)
        for profile_id, segment_id in exited:
            if rng.random() < 0.25:  # back in
                when = T0 + timedelta(hours=4, seconds=rng.randrange(3600))
                self._qualify(wave, profile_id, segment_id, "realized", when)
        q = self.config.qualifications_topic
        seg = self.config.mapped_segments()[0]
        ok = {"segmentId": seg, "status": "realized", "qualificationTime": "2025-03-01T09:00:00Z"}
        self._bad(wave, q, "p-00007", b'{"profileId": "p-00007", "segmentId": ', "invalid_json")
        self._bad(wave, q, "p-00008", b"not json at all", "invalid_json")
        body: Json = {"profileId": "p-00009", **ok}
        del body["segmentId"]
        self._bad(wave, q, "p-00009", json.dumps(body).encode(), "missing_field")
        body = {"profileId": "p-00010", **ok, "status": "qualified"}
        self._bad(wave, q, "p-00010", json.dumps(body).encode(), "invalid_status")
        body = {"profileId": "p-00012", **ok}
        self._bad(wave, q, "p-00011", json.dumps(body).encode(), "key_mismatch")
        self.waves.append(Wave("qualifications", wave, len(self.model.records)))

        # Wave 3: profile changes in random order, then two deletions. A change is
        # resolved against the profile as it is when the change is produced.
        wave = []
        deleted = [i for i in ids[-200:] if self.model.profiles[i].members][:2]
        changing = [i for i in ids if i not in deleted]
        changes: list[tuple[str, str]] = []
        for kind, count in (
            ("lastName", 400),  # mapped by the first destination
            ("firstName", 200),  # mapped by the second destination
            ("tier", 500),  # mapped by the second destination
            ("no tier", 40),  # a removed attribute
            ("city", 300),  # mapped by no destination
            ("same", 200),  # changes no value
        ):
            changes.extend((profile_id, kind) for profile_id in rng.sample(changing, count))
        without_ecid = [i for i in changing if "ecid" not in self.model.profiles[i].identities]
        changes.extend((profile_id, "ecid") for profile_id in rng.sample(without_ecid, 60))
        rng.shuffle(changes)
        for n, (profile_id, kind) in enumerate(changes):
            when = T0 + timedelta(hours=6, seconds=n)
            state = self.model.profiles[profile_id]
            name = state.attributes["person"]["name"]
            patch: Json
            if kind == "lastName":
                patch = {"person": {"name": {"lastName": rng.choice(LAST_NAMES)}}}
            elif kind == "firstName":
                patch = {"person": {"name": {"firstName": rng.choice(FIRST_NAMES)}}}
            elif kind == "tier":
                patch = {"loyalty": {"tier": rng.choice(TIERS)}}
            elif kind == "no tier":
                patch = {"loyalty": {"tier": None}}
            elif kind == "city":
                patch = {"homeAddress": {"city": rng.choice(CITIES)}}
            elif kind == "same":
                patch = {"person": {"name": {"lastName": name["lastName"]}}}
            else:  # an identity map change: the ecid is known now
                identities = copy.deepcopy(state.identities)
                identities["ecid"] = [{"id": str(rng.randrange(10**37, 10**38))}]
                self._update(wave, profile_id, when, {}, identities)
                continue
            self._update(wave, profile_id, when, patch)
        topic = self.config.profiles_topic
        bad = b'{"profileId": "p-00013", "attributes": {'
        self._bad(wave, topic, "p-00013", bad, "invalid_json")
        body = {"profileId": "p-00015", "updateTime": "2025-03-01T14:00:00Z", "attributes": {}}
        self._bad(wave, topic, "p-00014", json.dumps(body).encode(), "key_mismatch")
        for profile_id in deleted:
            wave.append((topic, profile_id.encode(), None))  # tombstone
            self.model.delete(profile_id)
        self.waves.append(Wave("profile changes", wave, len(self.model.records)))


# -- Kafka and Kinesis -------------------------------------------------------------------


def demo_topic(config: DemoConfig, name: str) -> bool:
    """The demo's own topics: its inputs, its dead-letter topic, its app's internal topics."""
    return name in config.topics or name.startswith(f"{config.app_id}-")


async def delete_topics(admin: Any, config: DemoConfig) -> list[str]:
    doomed = sorted(t for t in await admin.list_topics() if demo_topic(config, t))
    if doomed:
        await admin.delete_topics(doomed)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [t for t in await admin.list_topics() if t in doomed]
        if not left:
            return doomed
        await asyncio.sleep(0.2)
    raise RuntimeError(f"topics still there 30 s after deletion: {left}")


async def prepare_topics(bootstrap: str, config: DemoConfig) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        deleted = await delete_topics(admin, config)
        if deleted:
            say(f"deleted topics left by an earlier run: {', '.join(deleted)}")
        deadline = time.monotonic() + 30
        while True:  # a just-deleted topic can stay "marked for deletion" for a moment
            response = await admin.create_topics(
                [NewTopic(t, PARTITIONS, 1) for t in config.topics]
            )
            errors = [
                (t[0], t[1]) for t in response.topic_errors if t[1] not in (0, 36)
            ]  # 36: already exists (created by the previous attempt)
            if not errors:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot create topics: {errors}")
            await asyncio.sleep(0.5)
        while True:
            described = await admin.describe_topics(config.topics)
            if all(
                d["error_code"] == 0
                and len(d["partitions"]) == PARTITIONS
                and all(p["leader"] >= 0 for p in d["partitions"])
                for d in described
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics not ready: {described}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    say(f"created topics {', '.join(config.topics)} ({PARTITIONS} partitions each)")


async def drop_topics(bootstrap: str, config: DemoConfig) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        return await delete_topics(admin, config)
    finally:
        await admin.close()


def kinesis_client(endpoint: str) -> Any:
    return boto3.client("kinesis", endpoint_url=endpoint, **AWS)


def stream_exists(kinesis: Any, stream: str) -> bool:
    try:
        kinesis.describe_stream_summary(StreamName=stream)
    except kinesis.exceptions.ResourceNotFoundException:
        return False
    return True


def delete_streams(kinesis: Any, config: DemoConfig) -> list[str]:
    doomed = [d.stream for d in config.destinations if stream_exists(kinesis, d.stream)]
    for stream in doomed:
        kinesis.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)
    deadline = time.monotonic() + 30
    while [stream for stream in doomed if stream_exists(kinesis, stream)]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"streams still there 30 s after deletion: {doomed}")
        time.sleep(0.2)
    return doomed


def prepare_streams(kinesis: Any, config: DemoConfig) -> None:
    deleted = delete_streams(kinesis, config)
    if deleted:
        say(f"deleted streams left by an earlier run: {', '.join(deleted)}")
    for destination in config.destinations:
        kinesis.create_stream(StreamName=destination.stream, ShardCount=SHARDS)
    deadline = time.monotonic() + 60
    for destination in config.destinations:
        while True:
            summary = kinesis.describe_stream_summary(StreamName=destination.stream)
            if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream {destination.stream} not ACTIVE after 60 s")
            time.sleep(0.2)
    streams = ", ".join(d.stream for d in config.destinations)
    say(f"created streams {streams} ({SHARDS} shards each), ACTIVE")


@dataclass(frozen=True)
class Received:
    destination: int
    partition_key: str
    data: Json


def read_stream(kinesis: Any, index: int, stream: str) -> list[Received]:
    records: list[Received] = []
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    for shard in shards:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            reply = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            for record in reply["Records"]:
                data = json.loads(record["Data"])
                records.append(Received(index, record["PartitionKey"], data))
            if not reply["Records"]:
                break
            iterator = reply.get("NextShardIterator")
    return records


async def read_dead_letters(bootstrap: str, topic: str, expect: int) -> list[Json]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]
    letters: list[Json] = []
    if not partitions:
        return letters
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        # A batch's dead letters are written after its records were put: the last
        # few may still be on their way when the counters say "done".
        patience = time.monotonic() + 10
        while True:
            ends: dict[Any, int] = await consumer.end_offsets(partitions)
            deadline = time.monotonic() + 30
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                if time.monotonic() > deadline:
                    raise RuntimeError("could not read the dead-letter topic to its end in 30 s")
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    letters.extend(json.loads(m.value) for m in messages)
            if len(letters) >= expect or time.monotonic() > patience:
                return letters
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


# -- the worker ------------------------------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    data_dir: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                say("the worker ignored SIGTERM for 30 s: killing it")
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def log_tail(lines: int = 30) -> str:
    try:
        text = WORKER_LOG.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no worker log)"
    return "\n".join(f"  | {line}" for line in text.splitlines()[-lines:])


def port_in_use(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_worker(bootstrap: str, endpoint: str, config: DemoConfig) -> Worker:
    if port_in_use(WEB_PORT):  # else /readyz could be answered by someone else
        raise RuntimeError(f"port {WEB_PORT} is in use: is another demo worker running?")
    data_dir = Path(tempfile.mkdtemp(prefix="kd-demo-"))
    env = dict(os.environ)
    env["KD_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
    for index in range(len(config.destinations)):
        env[f"KD_DESTINATIONS__{index}__ENDPOINT_URL"] = endpoint
    WORKER_LOG.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "worker", "run", "--config", str(CONFIG)]
    command += ["--web-port", str(WEB_PORT), "--data-dir", str(data_dir)]
    with WORKER_LOG.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops the worker
        )
    say(f"started the worker (pid {process.pid}), log in {WORKER_LOG.relative_to(REPO)}")
    return Worker(process, data_dir)


async def wait_ready(session: aiohttp.ClientSession, worker: Worker) -> bool:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        if not worker.alive():
            say(f"the worker exited with code {worker.process.returncode}; log tail:")
            print(log_tail(), flush=True)
            return False
        try:
            async with session.get(f"{BASE_URL}/readyz") as reply:
                if reply.status == 200:
                    say(f"worker ready after {time.monotonic() - started:.1f} s")
                    return True
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    say(f"the worker was not ready after {READY_TIMEOUT_S:.0f} s; log tail:")
    print(log_tail(), flush=True)
    return False


@dataclass(frozen=True)
class Metrics:
    events: float
    exports: float
    series: dict[str, float]


async def read_metrics(session: aiohttp.ClientSession) -> Metrics:
    async with session.get(f"{BASE_URL}/metrics") as reply:
        text = await reply.text()
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kd_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)

    def total(metric: str) -> float:
        return sum(v for k, v in series.items() if k.startswith(metric + "{"))

    return Metrics(total("kd_events_total"), total("kd_exports_total"), series)


# -- producing and waiting -----------------------------------------------------------------


@dataclass
class PhaseTiming:
    name: str
    events: int
    produce_s: float
    processing_s: float  # from the first event handled to the last export accepted


async def produce(producer: Any, messages: list[Message]) -> float:
    started = time.monotonic()
    futures = [await producer.send(topic, value, key=key) for topic, key, value in messages]
    await asyncio.gather(*futures)
    return time.monotonic() - started


async def run_phase(
    session: aiohttp.ClientSession,
    producer: Any,
    worker: Worker,
    name: str,
    messages: list[Message],
    target_events: int,
    target_exports: int,
) -> PhaseTiming | None:
    before = await read_metrics(session)
    task = asyncio.create_task(produce(producer, messages))
    first: float | None = None
    last_change = started = time.monotonic()
    seen = (before.events, before.exports)
    try:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            current = await read_metrics(session)
            failed = task.exception() if task.done() else None
            if failed is not None:
                raise RuntimeError(f"producing wave {name!r} failed: {failed!r}")
            if first is None and current.events > before.events:
                first = now
            if (current.events, current.exports) != seen:
                seen, last_change = (current.events, current.exports), now
            if (
                task.done()
                and current.events >= target_events
                and current.exports >= target_exports
            ):
                break
            why = None
            if not worker.alive():
                why = f"the worker exited (code {worker.process.returncode})"
            elif now - started > PHASE_TIMEOUT_S:
                why = f"not done after {PHASE_TIMEOUT_S:.0f} s"
            elif task.done() and now - last_change > STALL_TIMEOUT_S:
                why = f"no progress for {STALL_TIMEOUT_S:.0f} s"
            if why:
                say(
                    f"wave {name!r}: {why}: events {current.events:.0f}/{target_events}, "
                    f"exports {current.exports:.0f}/{target_exports}; log tail:"
                )
                print(log_tail(), flush=True)
                return None
        produce_s = await task
    finally:
        if not task.done():
            task.cancel()
    end = time.monotonic()
    timing = PhaseTiming(name, len(messages), produce_s, end - (first or started))
    say(
        f"wave {name!r}: {len(messages):,} events produced in {produce_s:.2f} s, "
        f"handled in {timing.processing_s:.2f} s "
        f"(events {current.events:.0f}/{target_events}, "
        f"exports {current.exports:.0f}/{target_exports})"
    )
    if current.events > target_events or current.exports > target_exports:
        say("note: the worker counted more than was sent (events replayed?)")
    return timing


# -- the report ------------------------------------------------------------------------


def statuses(data: Json) -> list[str]:
    """What a record reports: its realized/exited entries, else "update"."""
    ups: Json = data.get("segmentMembership", {}).get("ups", {})
    changed = [entry.get("status") for entry in ups.values() if entry.get("status") != "existing"]
    return [str(s) for s in changed] or ["update"]


def tally(config: DemoConfig, records: Sequence[Expected | Received]) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for record in records:
        for status in statuses(record.data):
            counts[config.destinations[record.destination].name, status] += 1
    return counts


def fingerprint(record: Expected | Received) -> tuple[int, str, str]:
    return record.destination, record.partition_key, json.dumps(record.data, sort_keys=True)


def show(title: str, record: Received | None) -> None:
    if record is None:
        say(f"{title}: none received")
        return
    print(f"\n--- {title} (PartitionKey {record.partition_key!r})", flush=True)
    print(json.dumps(record.data, indent=2, ensure_ascii=False), flush=True)


def report(
    config: DemoConfig,
    model: Model,
    received: list[Received],
    letters: list[Json],
    timings: list[PhaseTiming],
    final: Metrics | None,
) -> bool:
    first, second = config.destinations[0], config.destinations[1]

    def pick(index: int, status: str) -> Received | None:
        return next(
            (r for r in received if r.destination == index and status in statuses(r.data)), None
        )

    show(f"a realized record in {first.stream!r}", pick(0, "realized"))
    show(f"an exited record in {first.stream!r}", pick(0, "exited"))
    show(f"a record in {second.stream!r}", pick(1, "realized") or pick(1, "update"))

    expected_counts, received_counts = tally(config, model.records), tally(config, received)
    print("\n--- records by destination and status (expected / received)", flush=True)
    for index, destination in enumerate(config.destinations):
        want = sum(1 for r in model.records if r.destination == index)
        got = sum(1 for r in received if r.destination == index)
        print(f"{destination.name} -> {destination.stream}: {want} / {got} records", flush=True)
        for status in ("realized", "exited", "update"):
            key = (destination.name, status)
            mark = "" if expected_counts[key] == received_counts[key] else "   <-- differs"
            print(f"    {status:9} {expected_counts[key]:6} / {received_counts[key]:6}{mark}")
    want_prints = Counter(fingerprint(r) for r in model.records)
    got_prints = Counter(fingerprint(r) for r in received)
    missing, extra = want_prints - got_prints, got_prints - want_prints
    contents_match = not missing and not extra
    if contents_match:
        print(f"contents: all {len(received)} records equal the expected ones (keys included)")
    else:
        print(
            f"contents: {sum(missing.values())} expected records missing, "
            f"{sum(extra.values())} unexpected"
        )
        for label, sample in (("missing", missing), ("unexpected", extra)):
            for (index, pkey, data), _ in list(sample.items())[:3]:
                print(f"    {label} in {config.destinations[index].stream} (key {pkey}): {data}")

    reasons = Counter(str(letter.get("reason")) for letter in letters)
    letters_match = reasons == model.dead_letters
    print("\n--- dead letters (expected / received)", flush=True)
    print(f"{config.dlq_topic}: {model.dead_letters.total()} / {len(letters)}")
    for reason in sorted(set(reasons) | set(model.dead_letters)):
        print(f"    {reason:15} {model.dead_letters[reason]:3} / {reasons[reason]:3}")

    if final is not None:
        print("\n--- events by topic and outcome (expected / the worker's kd_events_total)")
        counted: Counter[tuple[str, str]] = Counter()
        for name, value in final.series.items():
            if name.startswith("kd_events_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', name))
                counted[labels.get("topic", "?"), labels.get("outcome", "?")] += int(value)
        for topic, outcome in sorted(set(counted) | set(model.outcomes)):
            want, got = model.outcomes[topic, outcome], counted[topic, outcome]
            mark = "" if want == got else "   <-- differs"
            print(f"    {topic:28} {outcome:14} {want:6} / {got:6}{mark}")

    print("\n--- throughput", flush=True)
    for t in timings:
        rate = t.events / t.processing_s
        print(
            f"    {t.name:16} {t.events:6} events: produced in {t.produce_s:5.2f} s, "
            f"handled in {t.processing_s:5.2f} s ({rate:,.0f} events/s)"
        )
    if timings:
        events = sum(t.events for t in timings)
        processing = sum(t.processing_s for t in timings)
        producing = sum(t.produce_s for t in timings)
        print(
            f"    all waves        {events:6} events: produced in {producing:5.2f} s, "
            f"handled in {processing:5.2f} s -> {events / processing:,.0f} events/s"
        )
        print("    (handled: from the first event counted to the last record accepted by Kinesis)")
    if final is not None:
        series = final.series
        batches = series.get("kd_batch_seconds_count", 0.0)
        busy = series.get("kd_batch_seconds_sum", 0.0)
        puts = sum(v for k, v in series.items() if k.startswith("kd_put_records_seconds_sum"))
        calls = sum(v for k, v in series.items() if k.startswith("kd_put_records_seconds_count"))
        print(
            f"    worker: {busy:.2f} s busy in {batches:.0f} batches; {calls:.0f} PutRecords "
            f"calls took {puts:.2f} s in all; {os.cpu_count()} CPU cores on this host"
        )
    print(f"metrics: {BASE_URL}/metrics while the worker runs (kd_events_total, ...)", flush=True)

    counts_match = expected_counts == received_counts
    ok = counts_match and contents_match and letters_match
    print(flush=True)
    if ok:
        say(f"OK: received matched expected ({len(received)} records, {len(letters)} dead letters)")
    else:
        say(
            f"FAILED: received did not match expected (counts {'ok' if counts_match else 'differ'}"
            f", contents {'ok' if contents_match else 'differ'}"
            f", dead letters {'ok' if letters_match else 'differ'})"
        )
    return ok


# -- main --------------------------------------------------------------------------------


async def feed_and_check(bootstrap: str, endpoint: str, config: DemoConfig, worker: Worker) -> bool:
    started = time.monotonic()
    model = Model(config)
    feed = Feed(config, random.Random(SEED), model)
    feed.build()
    total = sum(len(w.messages) for w in feed.waves)
    say(
        f"generated {total:,} events for {PROFILES:,} profiles in "
        f"{time.monotonic() - started:.1f} s (seed {SEED}); expecting {len(model.records):,} "
        f"records and {model.dead_letters.total()} dead letters"
    )
    timings: list[PhaseTiming] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        if not await wait_ready(session, worker):
            return False
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            produced = 0
            for wave in feed.waves:
                produced += len(wave.messages)
                say(f"wave {wave.name!r}: producing {len(wave.messages):,} events")
                timing = await run_phase(
                    session,
                    producer,
                    worker,
                    wave.name,
                    wave.messages,
                    produced,
                    wave.records_after,
                )
                if timing is None:
                    break
                timings.append(timing)
        finally:
            await producer.stop()
        final = await read_metrics(session) if worker.alive() else None
    if len(timings) < len(feed.waves):
        say("reading back what arrived anyway")
    kinesis = kinesis_client(endpoint)
    received: list[Received] = []
    for index, destination in enumerate(config.destinations):
        received.extend(read_stream(kinesis, index, destination.stream))
    letters = await read_dead_letters(bootstrap, config.dlq_topic, model.dead_letters.total())
    say(f"read back {len(received):,} records from Kinesis, {len(letters)} dead letters")
    ok = report(config, model, received, letters, timings, final)
    return ok and len(timings) == len(feed.waves)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cleanup(bootstrap: str, endpoint: str, config: DemoConfig, worker: Worker | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    say("cleaning up")
    if worker is not None:
        worker.stop()
        say(f"worker stopped (exit code {worker.process.returncode})")
    try:
        asyncio.run(drop_topics(bootstrap, config))
        say("deleted the demo's topics")
    except Exception as exc:
        say(f"could not delete the demo's topics: {exc!r}")
    try:
        delete_streams(kinesis_client(endpoint), config)
        say("deleted the demo's streams")
    except Exception as exc:
        say(f"could not delete the demo's streams: {exc!r}")


def main() -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP") or "127.0.0.1:9092"
    endpoint = os.environ.get("KINESIS_ENDPOINT") or "http://127.0.0.1:4567"
    config = load_config(CONFIG)
    signal.signal(signal.SIGTERM, _terminate)
    say(f"Kafka at {bootstrap}, Kinesis at {endpoint}, configuration {CONFIG.relative_to(REPO)}")
    worker: Worker | None = None
    try:
        asyncio.run(prepare_topics(bootstrap, config))
        prepare_streams(kinesis_client(endpoint), config)
        worker = start_worker(bootstrap, endpoint, config)
        ok = asyncio.run(feed_and_check(bootstrap, endpoint, config, worker))
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as exc:
        say(f"failed: {exc!r}")
        if worker is not None:
            print(log_tail(), flush=True)
        return 1
    finally:
        cleanup(bootstrap, endpoint, config, worker)


if __name__ == "__main__":
    sys.exit(main())
