"""Crash recovery with and without Kafka static membership.

Run by hand against the local stack (make stack-up), from the repo root:

    PYTHONPATH=. .venv/bin/python bench/restart.py --runs 10

Each run: 2 workers on 8 partitions (session timeout 45 s, the default), a
steady load; the worker that joined second is killed with SIGKILL and started
again at once, with the same web port (and with static membership, the same
``runtime.instance_id``). Measured: SIGKILL -> every partition it held
committing again (read from the group's committed offsets), and whether the
other worker went through a rebalance. Record the output in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from tests.integration.test_static_membership import restart_after_sigkill
from tests.support import Stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--modes", nargs="+", default=["static", "dynamic"])
    args = parser.parse_args()
    stack = Stack(
        os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        os.environ.get("KINESIS_ENDPOINT", "http://127.0.0.1:4567"),
    )
    for mode in args.modes:
        times: list[float] = []
        rebalanced = 0
        for run in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory() as tmp:
                result = restart_after_sigkill(stack, Path(tmp), static=mode == "static")
            times.append(result.committing_again_s)
            rebalanced += result.other_rebalanced
            print(
                f"{mode:8} run {run:2}: committing again {result.committing_again_s:5.1f} s "
                f"after SIGKILL; other worker rebalanced: {result.other_rebalanced}; "
                f"same partitions: {result.same_partitions}; {result.received} records, "
                f"{result.violations} out of order or lost; {result.repairs} repairs",
                flush=True,
            )
        print(
            f"{mode:8} {args.runs} runs: median {statistics.median(times):.1f} s, "
            f"min {min(times):.1f} s, max {max(times):.1f} s; "
            f"other worker rebalanced in {rebalanced} of {args.runs}",
            flush=True,
        )


if __name__ == "__main__":
    main()
