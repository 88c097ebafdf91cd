"""What the worker must send and count: docs/contract.md sections 2 and 3.

`Model` is fed the events in the order one partition delivers them and keeps, per
profile, its attributes, identities and memberships, like the worker's tables. Each
event appends the records it causes to `records` (in order, per destination), bad
events count in `dead_letters` by reason, and every event counts in `outcomes` as
the worker's `kd_events_total` does.

Identities: the latest `identityMap` of a profile update, else the last non-empty
`identityMap` of an applied qualification (remembered), else `{}` (contract
sections 1 and 3).

Limits, on purpose (the feeds that use it stay inside them): times are taken as
parsed; events the worker must refuse are counted with `bad`.
"""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from reference.config import Config
from reference.xdm import Json, merge, project, same_value, values_differ

Identities = dict[str, list[dict[str, str]]]

MAX_KEY = 256  # longer partition keys are replaced by their SHA-256 hex digest


def aep_time(t: datetime) -> str:
    """`lastQualificationTime`: UTC, whole seconds, `YYYY-MM-DDTHH:MM:SSZ`."""
    u = t.astimezone(UTC)
    return f"{u:%Y-%m-%dT%H:%M:%S}Z"


def partition_key(identities: Identities, namespaces: Sequence[str], profile_id: str) -> str:
    """The first id under the first of `namespaces` the profile has, else the profile id."""
    for namespace in namespaces:
        for identity in identities.get(namespace) or []:
            if identity.get("id"):
                key = identity["id"]
                return hashlib.sha256(key.encode()).hexdigest() if len(key) > MAX_KEY else key
    return profile_id


@dataclass
class ProfileState:
    attributes: Json
    identities: Identities
    # segment id -> (member?, lastQualificationTime), for mapped segments only
    members: dict[str, tuple[bool, datetime]] = field(default_factory=dict)
    # from the last applied qualification that carried a non-empty identityMap
    remembered: Identities | None = None

    def carried(self) -> Identities:
        """The identities a record carries."""
        return self.identities or self.remembered or {}


@dataclass(frozen=True)
class Expected:
    destination: int  # index in Config.destinations
    partition_key: str
    data: Json


@dataclass
class Model:
    config: Config
    profiles: dict[str, ProfileState] = field(default_factory=dict)
    records: list[Expected] = field(default_factory=list)
    dead_letters: Counter[str] = field(default_factory=Counter)
    # (topic, outcome) as the worker counts events in kd_events_total
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def _record(
        self, index: int, profile_id: str, state: ProfileState, changed: dict[str, str]
    ) -> bool:
        """One record for destination `index`, unless the profile is in none of its
        segments; `changed` maps the segments that changed to their exported status."""
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
        data["identityMap"] = copy.deepcopy(state.carried())
        key = partition_key(state.carried(), destination.namespaces, profile_id)
        self.records.append(Expected(index, key, data))
        return True

    def _count(self, topic: str, outcome: str) -> None:
        self.outcomes[topic, outcome] += 1

    def update(self, profile_id: str, patch: Json, identities: Identities | None) -> None:
        """A profile update: `attributes` merged in, `identityMap` (when sent) replacing."""
        state = self.profiles.setdefault(profile_id, ProfileState({}, {}))
        before = state.attributes
        state.attributes = merge(before, patch)
        identities_changed = identities is not None and not same_value(identities, state.identities)
        if identities is not None:
            state.identities = copy.deepcopy(identities)
        exported = False
        for index, destination in enumerate(self.config.destinations):
            differs = values_differ(before, state.attributes, destination.attributes)
            if identities_changed or differs:
                exported |= self._record(index, profile_id, state, {})
        self._count(self.config.profiles_topic, "exported" if exported else "no_export")

    def bad(self, topic: str, reason: str) -> None:
        """An event the worker must dead-letter with `reason`; it changes nothing."""
        self.dead_letters[reason] += 1
        self._count(topic, "dead_lettered")

    def qualify(
        self,
        profile_id: str,
        segment_id: str,
        status: str,
        when: datetime,
        identities: Identities | None = None,
    ) -> None:
        """A segment qualification, `when` being its `qualificationTime` as sent, with
        the `identityMap` it carries."""
        topic = self.config.qualifications_topic
        if not any(d.maps(segment_id) for d in self.config.destinations):
            self._count(topic, "unmapped")  # ignored
            return
        state = self.profiles.setdefault(profile_id, ProfileState({}, {}))
        previous = state.members.get(segment_id)
        if previous is not None and when < previous[1]:
            self._count(topic, "stale")  # changes nothing
            return
        if identities:
            state.remembered = copy.deepcopy(identities)
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
        """A tombstone: every segment the profile was in exits, then its state goes."""
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
