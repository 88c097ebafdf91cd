"""How long a restarted worker takes to be ready again, by store and table size.

Run by hand against the local stack (make stack-up), from the repo root:

    PYTHONPATH=. .venv/bin/python bench/recovery.py --profiles 20000

For each store it loads N profiles (one profile update and one segment entry
each, so both tables hold N keys), stops the worker with SIGTERM, starts it
again on the same data dir and measures the time to /readyz. Also reports the
load's events/s. Results go to stdout; record them in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

from tests.integration.harness import SEG_A, Deployment, ecid
from tests.support import Stack, profile_update, qualification


def run(store: str, profiles: int, workdir: Path) -> None:
    stack = Stack(
        os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        os.environ.get("KINESIS_ENDPOINT", "http://127.0.0.1:4567"),
    )
    deployment = Deployment(stack, f"bench-rec-{uuid.uuid4().hex[:6]}", workdir, partitions=4)
    deployment.create()
    try:
        ids = [f"b-{i:07d}" for i in range(profiles)]
        worker = deployment.worker(store=store)
        worker.start()
        started = time.monotonic()
        deployment.send(
            *[
                ("p", p, profile_update(p, {"person": {"email": f"{p}@x.io"}}, ecid(p)))
                for p in ids
            ],
            *[("q", p, qualification(p, SEG_A, "realized", "2021-06-01T00:00:00Z")) for p in ids],
        )
        deployment.wait_consumed(timeout=600)
        load_s = time.monotonic() - started
        assert worker.stop() == 0
        restarted = deployment.worker("restarted", data_dir=worker.data_dir, store=store)
        restarted.start(wait_ready=False)
        ready_s = restarted.wait_ready(timeout=600)
        restarted.stop()
        print(
            f"{store:12} {profiles:>8} profiles ({2 * profiles} table keys): "
            f"load {2 * profiles / load_s:,.0f} events/s; restart ready in {ready_s:.2f} s"
        )
    finally:
        deployment.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--stores", nargs="+", default=["memory://", "rocksdb://"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores:
            run(store, args.profiles, Path(tmp))


if __name__ == "__main__":
    main()
