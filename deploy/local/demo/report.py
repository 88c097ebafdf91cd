"""The report: sample records, counts and contents against the expectation, throughput."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence

from reference import Config, Expected, Model

from .config import BASE_URL, Json, say
from .observe import Metrics, Received
from .waves import PhaseTiming


def statuses(data: Json) -> list[str]:
    """What a record reports: its realized/exited entries, else "update"."""
    ups: Json = data.get("segmentMembership", {}).get("ups", {})
    changed = [entry.get("status") for entry in ups.values() if entry.get("status") != "existing"]
    return [str(s) for s in changed] or ["update"]


def tally(config: Config, records: Sequence[Expected | Received]) -> Counter[tuple[str, str]]:
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


def samples(config: Config, received: list[Received]) -> None:
    """One received record of each kind, printed whole."""
    first, second = config.destinations[0], config.destinations[1]

    def pick(index: int, status: str) -> Received | None:
        return next(
            (r for r in received if r.destination == index and status in statuses(r.data)), None
        )

    show(f"a realized record in {first.stream!r}", pick(0, "realized"))
    show(f"an exited record in {first.stream!r}", pick(0, "exited"))
    show(f"a record in {second.stream!r}", pick(1, "realized") or pick(1, "update"))


def compare_counts(config: Config, model: Model, received: list[Received]) -> bool:
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
    return expected_counts == received_counts


def compare_contents(config: Config, model: Model, received: list[Received]) -> bool:
    want_prints = Counter(fingerprint(r) for r in model.records)
    got_prints = Counter(fingerprint(r) for r in received)
    missing, extra = want_prints - got_prints, got_prints - want_prints
    if not missing and not extra:
        print(f"contents: all {len(received)} records equal the expected ones (keys included)")
        return True
    print(
        f"contents: {sum(missing.values())} expected records missing, "
        f"{sum(extra.values())} unexpected"
    )
    for label, sample in (("missing", missing), ("unexpected", extra)):
        for (index, pkey, data), _ in list(sample.items())[:3]:
            print(f"    {label} in {config.destinations[index].stream} (key {pkey}): {data}")
    return False


def compare_dead_letters(config: Config, model: Model, letters: list[Json]) -> bool:
    reasons = Counter(str(letter.get("reason")) for letter in letters)
    print("\n--- dead letters (expected / received)", flush=True)
    print(f"{config.dlq_topic}: {model.dead_letters.total()} / {len(letters)}")
    for reason in sorted(set(reasons) | set(model.dead_letters)):
        print(f"    {reason:15} {model.dead_letters[reason]:3} / {reasons[reason]:3}")
    return reasons == model.dead_letters


def compare_outcomes(model: Model, final: Metrics) -> None:
    """Informative only: the model's outcome counts against the worker's."""
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


def throughput(timings: list[PhaseTiming], final: Metrics | None) -> None:
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


def report(
    config: Config,
    model: Model,
    received: list[Received],
    letters: list[Json],
    timings: list[PhaseTiming],
    final: Metrics | None,
) -> bool:
    """Prints the comparison; True when records and dead letters are as expected."""
    samples(config, received)
    counts_match = compare_counts(config, model, received)
    contents_match = compare_contents(config, model, received)
    letters_match = compare_dead_letters(config, model, letters)
    if final is not None:
        compare_outcomes(model, final)
    throughput(timings, final)

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
