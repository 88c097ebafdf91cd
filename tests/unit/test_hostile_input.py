"""Hostile input through the real BatchProcessor: nothing escapes, nothing wedges.

Batches of generated events (sizes up to 2 MB, nesting up to 10,000, invalid
UTF-8, NaN and Infinity, duplicate keys, out-of-range times, a key that is not
the body's profile id) mixed with good ones go through the processor with
tables and a dead-letter topic that refuse what Kafka would refuse. For each:

- no exception escapes (one would hold the partition for good);
- every dead letter fits in a Kafka message;
- every event is applied or dead-lettered, and a dead-lettered event changes
  nothing: the batch leaves the same state and exports as the batch without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from worker.kinesis import KinesisWriter, PutReply, StreamSummary, WriterConfig
from worker.pipeline import BatchProcessor, Destination, InputMessage
from worker.settings import Settings

MAX_BYTES = 1_000_000  # what a dead letter (key + value) may weigh in Kafka
QUALIFICATIONS = "segment-qualifications"
PROFILES = "profile-updates"
SEGMENTS = ["s-1", "s-2", "s-unmapped"]
KAFKA_MAX_REQUEST = 1_048_576  # the producer's default max_request_size

SETTINGS = Settings.model_validate(
    {
        "kafka": {"qualifications_topic": QUALIFICATIONS, "profiles_topic": PROFILES},
        "destinations": [
            {
                "name": "one",
                "stream": "stream-one",
                "region": "us-east-1",
                "segments": [{"id": "s-1"}, {"id": "s-2"}],
                "attributes": ["person.name", "loyalty.tier", "a.a.a"],
                "partition_key_namespaces": ["ecid"],
            },
            {
                "name": "two",
                "stream": "stream-two",
                "region": "us-east-1",
                "segments": [{"id": "s-2"}],
                "attributes": ["big", "loyalty"],
            },
        ],
    }
)


class KafkaLimitedTables:
    """The tables as Faust stores them: JSON (orjson, as faust.utils.json) in a
    changelog message that Kafka refuses over its limit."""

    def __init__(self) -> None:
        self.stored: dict[tuple[str, str], bytes] = {}

    def _get(self, table: str, key: str) -> dict[str, Any] | None:
        value = self.stored.get((table, key))
        return None if value is None else orjson.loads(value)

    def _put(self, table: str, key: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self.stored.pop((table, key), None)
            return
        encoded = orjson.dumps(value)  # raises as Faust's serializer would
        assert len(key.encode()) + len(encoded) < KAFKA_MAX_REQUEST, "changelog message refused"
        self.stored[(table, key)] = encoded

    def get_profile(self, profile_id: str, scope: Any) -> dict[str, Any] | None:
        return self._get("profiles", profile_id)

    def get_memberships(self, profile_id: str, scope: Any) -> dict[str, Any] | None:
        return self._get("memberships", profile_id)

    def put_profile(self, profile_id: str, value: dict[str, Any] | None, scope: Any) -> None:
        self._put("profiles", profile_id, value)

    def put_memberships(self, profile_id: str, value: dict[str, Any] | None, scope: Any) -> None:
        self._put("memberships", profile_id, value)

    async def flush(self) -> None:
        pass


class KafkaLimitedDeadLetters:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, key: bytes | None, value: bytes) -> None:
        assert len(key or b"") + len(value) < MAX_BYTES, "dead letter refused by Kafka"
        self.sent.append(orjson.loads(value))


class AcceptingTransport:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, str]] = []

    async def put_records(
        self, stream: str, records: Sequence[tuple[bytes, str]]
    ) -> list[PutReply]:
        self.records.extend(records)
        return [PutReply(shard_id="shardId-000000000000") for _ in records]

    async def describe_stream(self, stream: str) -> StreamSummary:
        return StreamSummary("ACTIVE", 1, 1024 * 1024)

    async def list_shards(self, stream: str) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        pass


async def run(messages: Sequence[InputMessage]) -> tuple[Any, ...]:
    """Processes one batch in a fresh world: (state, exports, dead letters)."""
    tables, letters = KafkaLimitedTables(), KafkaLimitedDeadLetters()
    transports = [AcceptingTransport() for _ in SETTINGS.destinations]
    config = WriterConfig(backoff_base_s=0.0, backoff_max_s=0.0, fatal_retry_s=0.0)
    destinations = [
        Destination(d, KinesisWriter(d.stream, t, config))
        for d, t in zip(SETTINGS.destinations, transports, strict=True)
    ]
    processor = BatchProcessor(SETTINGS, destinations, tables, letters)
    await processor.process(messages)
    exports = [[(orjson.loads(data), key) for data, key in t.records] for t in transports]
    return tables.stored, exports, letters.sent


# -- generated input -----------------------------------------------------------------------

PROFILE_IDS = st.sampled_from(["p1", "p2", "p3"])
TIMES = st.sampled_from(
    [
        "2020-05-25T21:24:39Z",
        "2020-05-26T08:00:00Z",
        "2021-01-01T00:00:00.123456789Z",
        "2020-05-25T23:37:33.5+02:00",
        "2020-13-01T00:00:00Z",  # month 13
        "9999-12-31T23:59:59-23:59",  # beyond datetime once in UTC
        "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
        "2020-05-25",
        "",
    ]
)


def deep(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


SCALARS = st.one_of(
    st.sampled_from(
        ["null", "true", "NaN", "Infinity", "-Infinity", "1e400", "-0", "18446744073709551616"]
    ),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=20).map(lambda t: json.dumps(t)),
    st.text(max_size=20).map(lambda t: json.dumps(t, ensure_ascii=False)),
)
BIG_TEXT = st.integers(0, 2_000_000).map(lambda n: json.dumps("x" * n))
NUL_TEXT = st.integers(0, 200_000).map(lambda n: json.dumps("\x00" * n))
DEEP = st.integers(1, 10_000).map(deep)
DEEP_LIST = st.integers(1, 10_000).map(lambda n: "[" * n + "]" * n)
# Deep but encodable (under orjson's 255 levels), and deeper.
VALUES = st.one_of(
    SCALARS, SCALARS, BIG_TEXT, NUL_TEXT, DEEP, DEEP_LIST, st.integers(200, 300).map(deep)
)


@st.composite
def attributes(draw: st.DrawFn) -> str:
    fields = draw(
        st.lists(
            st.tuples(st.sampled_from(["person", "loyalty", "big", "a", "x"]), VALUES),
            max_size=3,
        )
    )
    inner = ",".join(f'"{name}":{value}' for name, value in fields)
    return "{" + inner + "}" if draw(st.booleans()) else draw(VALUES)


@st.composite
def identity_map(draw: st.DrawFn) -> str:
    identity = draw(
        st.sampled_from(
            [
                '{"ecid":[{"id":"E1"}]}',
                '{"ecid":[{"id":"E1","x":%s}]}',
                '{"ecid":{"id":"E1"}}',
                '{"ecid":[{"id":7}]}',
                "%s",
            ]
        )
    )
    return identity.replace("%s", draw(VALUES)) if "%s" in identity else identity


@st.composite
def body(draw: st.DrawFn, topic: str, profile_id: str) -> bytes:
    fields: list[str] = []
    if draw(st.integers(0, 9)):  # absent one time in ten, another id one time in ten
        body_id = draw(PROFILE_IDS) if draw(st.integers(0, 9)) == 0 else profile_id
        fields.append(f'"profileId":{json.dumps(body_id)}')
    if draw(st.integers(0, 5)) == 0:  # a duplicate key: JSON parsers keep the last
        fields.append(f'"profileId":{json.dumps(draw(PROFILE_IDS))}')
    if topic == QUALIFICATIONS:
        fields.append(f'"segmentId":{json.dumps(draw(st.sampled_from(SEGMENTS)))}')
        status = draw(
            st.sampled_from(
                ["realized", "existing", "exited", "realized", "exited", "active", None]
            )
        )
        fields.append(f'"status":{json.dumps(status) if status else draw(VALUES)}')
        fields.append(f'"qualificationTime":{json.dumps(draw(TIMES))}')
    else:
        fields.append(f'"attributes":{draw(attributes())}')
        if draw(st.booleans()):
            fields.append(f'"updateTime":{json.dumps(draw(TIMES))}')
    if draw(st.booleans()):
        fields.append(f'"identityMap":{draw(identity_map())}')
    draw(st.randoms()).shuffle(fields)
    text = ("{" + ",".join(fields) + "}").encode()
    damage = draw(st.integers(0, 19))
    if damage == 0:
        return text[: draw(st.integers(0, len(text)))]  # cut anywhere
    if damage == 1:
        return b"\xff\xfe" + text  # not UTF-8
    if damage == 2:
        return draw(st.binary(max_size=64))
    return text


@st.composite
def good_message(draw: st.DrawFn, offset: int) -> InputMessage:
    profile_id = draw(PROFILE_IDS)
    body: dict[str, Any] = {"profileId": profile_id}
    if draw(st.booleans()):
        topic = QUALIFICATIONS
        body["segmentId"] = draw(st.sampled_from(SEGMENTS))
        body["status"] = draw(st.sampled_from(["realized", "existing", "exited"]))
        body["qualificationTime"] = f"2020-05-25T21:{draw(st.integers(0, 59)):02d}:00Z"
    else:
        topic = PROFILES
        body["attributes"] = {
            "person": {"name": draw(st.text(max_size=8))},
            "loyalty": {"tier": draw(st.sampled_from(["gold", "silver", None]))},
        }
    if draw(st.booleans()):
        body["identityMap"] = {"ecid": [{"id": draw(st.sampled_from(["E1", "E2"]))}]}
    return InputMessage(topic, offset % 2, offset, profile_id.encode(), orjson.dumps(body))


@st.composite
def message(draw: st.DrawFn, offset: int) -> InputMessage:
    if draw(st.booleans()):
        return draw(good_message(offset))
    topic = draw(st.sampled_from([QUALIFICATIONS, PROFILES]))
    profile_id = draw(PROFILE_IDS)
    key_kind = draw(st.integers(0, 19))
    key: bytes | None = profile_id.encode()
    if key_kind == 0:
        key = None
    elif key_kind == 1:
        key = b"\xff" + profile_id.encode()
    elif key_kind == 2:
        key = b"k" * draw(st.integers(1, 500_000))
    value: bytes | None = None if draw(st.integers(0, 14)) == 0 else draw(body(topic, profile_id))
    return InputMessage(topic, offset % 2, offset, key, value)


@st.composite
def batches(draw: st.DrawFn) -> list[InputMessage]:
    count = draw(st.integers(1, 8))
    return [draw(message(offset)) for offset in range(count)]


@settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=batches())
async def test_no_input_escapes_wedges_or_half_applies(batch: list[InputMessage]) -> None:
    state, exports, letters = await run(batch)  # no exception escapes
    events = [letter for letter in letters if "destination" not in letter]
    records = [letter for letter in letters if "destination" in letter]  # Kinesis refused
    dead = {letter["source"]["offset"] for letter in events}
    assert len(dead) == len(events)  # one dead letter per event at the most
    for letter in letters:
        assert letter["reason"] != "internal_error", letter["detail"]
        event(letter["reason"])
    # Dead-lettered events change nothing: the same batch without them leaves
    # the same state, exports and refused records.
    if dead:
        applied = [m for m in batch if m.offset not in dead]
        state_without, exports_without, letters_without = await run(applied)
        assert state_without == state
        assert exports_without == exports
        assert strip(letters_without) == strip(records)
    event(f"events applied: {len(batch) - len(dead)} of {len(batch)}")


def strip(letters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in letter.items() if k != "failedAt"} for letter in letters]
