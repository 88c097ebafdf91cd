"""How often the restart tests pass: the kill test and the scaling test, N times each.

Run by hand against the local stack (make stack-up), from the repo root:

    PYTHONPATH=. .venv/bin/python bench/flakes.py --runs 20

Each run is a separate pytest process. Prints one line per run (pass or fail,
duration, the test's own figures) and passes/runs per test, with the recovery
times: for the kill test, restarted worker ready after the SIGKILL and after
the SIGTERM; for the scaling test, every partition committing again after the
join, the SIGTERM and the SIGKILL. Failed runs keep their output under
--keep (default .stack/flakes). Record the output in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

TESTS = {
    "kill": "tests/integration/test_pipeline.py::test_killing_the_worker_loses_nothing",
    "scaling": "tests/integration/test_scaling.py::test_partitions_and_state_move_between_workers",
}
# Figures quoted per test: (label, key path in the recorded property).
QUOTED: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "kill": [
        ("ready after SIGKILL", ("round1_ready_s",)),
        ("ready after SIGTERM", ("round2_ready_s",)),
    ],
    "scaling": [
        ("committing after join", ("join", "flowing_s")),
        ("committing after SIGTERM", ("sigterm", "flowing_s")),
        ("committing after SIGKILL", ("sigkill", "flowing_s")),
    ],
}


def run_once(name: str, keep: Path, index: int) -> tuple[bool, float, dict[str, Any]]:
    report = keep / f"{name}-{index}.xml"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            TESTS[name],
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.monotonic() - started
    passed = done.returncode == 0
    if passed:
        figures = {}
        for prop in ElementTree.parse(report).iter("property"):
            if prop.get("name") == name:
                figures = json.loads(prop.get("value") or "{}")
        report.unlink()
        return True, took, figures
    (keep / f"{name}-{index}.log").write_text(done.stdout + done.stderr)
    return False, took, {}


def pick(figures: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = figures
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tests", nargs="+", default=list(TESTS), choices=list(TESTS))
    parser.add_argument("--keep", type=Path, default=Path(".stack/flakes"))
    args = parser.parse_args()
    args.keep.mkdir(parents=True, exist_ok=True)
    for name in args.tests:
        passes = 0
        quoted: dict[str, list[float]] = {label: [] for label, _ in QUOTED[name]}
        for index in range(1, args.runs + 1):
            passed, took, figures = run_once(name, args.keep, index)
            passes += passed
            values = []
            for label, path in QUOTED[name]:
                value = pick(figures, path)
                if value is not None:
                    quoted[label].append(value)
                    values.append(f"{label} {value:.1f} s")
            kept = "" if passed else f" (output in {args.keep}/{name}-{index}.log)"
            print(
                f"{name} run {index:2}: {'pass' if passed else 'FAIL'} in {took:.0f} s"
                f"{'; ' + ', '.join(values) if values else ''}{kept}",
                flush=True,
            )
        summary = [
            f"{label} median {statistics.median(v):.1f} s, max {max(v):.1f} s"
            for label, v in quoted.items()
            if v
        ]
        print(f"{name}: {passes}/{args.runs} passed; " + "; ".join(summary), flush=True)


if __name__ == "__main__":
    main()
