"""What one profile's memberships weigh, by number of segments kept.

Run by hand, from the repo root (no stack needed):

    PYTHONPATH=. .venv/bin/python bench/state_size.py --profiles 20000 --segments 10

Each profile is a member of every one of ``--segments`` segments (UUID ids, as
Real-Time CDP's), stored as the worker stores it (``memberships_to_json``,
keyed by a 12-character profile id). Prints, per profile:

- the changelog message (key + JSON value, as Faust's json codec writes it);
- ``memory://``: the Python heap a table of them takes (tracemalloc, the dict
  of values Faust's memory store keeps);
- ``rocksdb://``: the bytes on disk of a RocksDB opened with Faust's options
  (``faust.stores.rocksdb.RocksDBOptions``) once flushed and compacted.

The same for the profile table's value with remembered identities is left out:
it does not grow with segments.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from faust.serializers import codecs
from faust.stores.rocksdb import RocksDBOptions

from worker.membership import SegmentState, memberships_to_json


def memberships(segments: list[str], index: int) -> dict[str, object]:
    base = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=index)
    states = {
        segment: SegmentState(True, base + timedelta(microseconds=n))
        for n, segment in enumerate(segments)
    }
    return memberships_to_json(states)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profiles", type=int, default=20000)
    parser.add_argument("--segments", type=int, default=10)
    args = parser.parse_args()
    segments = [str(uuid.uuid4()) for _ in range(args.segments)]
    keys = [f"p-{n:010d}" for n in range(args.profiles)]
    dumps = codecs.get_codec("json").dumps

    changelog = sum(
        len(dumps(key)) + len(dumps(memberships(segments, i))) for i, key in enumerate(keys)
    )

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = {k: memberships(segments, i) for i, k in enumerate(keys)}
    heap = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del table

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db"
        db = RocksDBOptions().open(path)
        for i, k in enumerate(keys):
            db.put(dumps(k), dumps(memberships(segments, i)))
        db.flush()
        db.compact_range(None, None)
        db.close()
        disk = sum(f.stat().st_size for f in path.rglob("*.sst"))

    n = args.profiles
    print(
        f"{args.segments} segments, {n:,} profiles: changelog {changelog / n:,.0f} B/profile, "
        f"memory:// {heap / n:,.0f} B/profile, rocksdb:// {disk / n:,.0f} B/profile (SST files)"
    )


if __name__ == "__main__":
    main()
