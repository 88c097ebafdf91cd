"""The sample events, in three waves, and what they must cause (by `reference.Model`).

Every event is fed to the model as it is generated, so the model holds what the
worker must send once the wave is handled. One seed gives the same events, always.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from reference import Config, Identities, Model

from .config import PROFILES, UNMAPPED_SEGMENT, Json

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
    config: Config
    rng: random.Random
    model: Model
    waves: list[Wave] = field(default_factory=list)
    # Profiles whose updates carry no identities: those their qualifications carry.
    qualifying: dict[str, Identities] = field(default_factory=dict)

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
        identities = self.model.profiles[profile_id].identities or self.qualifying.get(profile_id)
        if identities and self.rng.random() < 0.5:  # optional; the profile table's win
            body["identityMap"] = identities
        out.append(
            (self.config.qualifications_topic, profile_id.encode(), json.dumps(body).encode())
        )
        # The worker sees the time as sent (a fraction may be left out).
        self.model.qualify(
            profile_id, segment_id, status, datetime.fromisoformat(sent), body.get("identityMap")
        )

    def _bad(self, out: list[Message], topic: str, key: str, value: bytes, reason: str) -> None:
        out.append((topic, key.encode(), value))
        self.model.bad(topic, reason)

    def build(self) -> None:
        ids = [f"p-{n:05d}" for n in range(1, PROFILES + 1)]
        self._profiles(ids)
        self._qualifications(ids)
        self._changes(ids)

    def _profiles(self, ids: list[str]) -> None:
        """Wave 1: every profile once, with its identities (some have no ecid)."""
        rng = self.rng
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
            if rng.random() < 0.1:
                # Known only from its qualifications, whose identities its records
                # then carry (remembered: contract sections 1 and 3).
                self.qualifying[profile_id] = identities
                self._update(wave, profile_id, T0 - timedelta(days=1), attributes)
                continue
            self._update(wave, profile_id, T0 - timedelta(days=1), attributes, identities)
        self.waves.append(Wave("profiles", wave, len(self.model.records)))

    def _qualifications(self, ids: list[str]) -> None:
        """Wave 2: entries, duplicates, stale events, exits, re-entries, bad events."""
        rng = self.rng
        segments = [*self.config.mapped_segments(), UNMAPPED_SEGMENT]
        odds = dict.fromkeys(segments, 0.4)
        wave: list[Message] = []
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
        self._bad_qualifications(wave)
        self.waves.append(Wave("qualifications", wave, len(self.model.records)))

    def _bad_qualifications(self, wave: list[Message]) -> None:
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

    def _changes(self, ids: list[str]) -> None:
        """Wave 3: profile changes in random order, then two deletions. A change is
        resolved against the profile as it is when the change is produced."""
        rng = self.rng
        wave: list[Message] = []
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
        body: Json = {
            "profileId": "p-00015",
            "updateTime": "2025-03-01T14:00:00Z",
            "attributes": {},
        }
        self._bad(wave, topic, "p-00014", json.dumps(body).encode(), "key_mismatch")
        for profile_id in deleted:
            wave.append((topic, profile_id.encode(), None))  # tombstone
            self.model.delete(profile_id)
        self.waves.append(Wave("profile changes", wave, len(self.model.records)))
