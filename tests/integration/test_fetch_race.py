"""The post-restart stall and its data-loss variant, against the real broker.

Runs docs/upstream/faust_fetch_race.py (the reproduction written for
faust-streaming): a table to recover, 100 records waiting with nothing
committed, then 10 more once the app runs. Faust as released loses the 100
(fetched while recovery had emptied the active-partition set, dropped, and
then committed past); with worker.faust's fixes nothing is lost.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, Stack

SCRIPT = REPO / "docs" / "upstream" / "faust_fetch_race.py"


def reproduce(stack: Stack, tmp_path: Path, *flags: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "FETCH_RACE_DATADIR": str(tmp_path / "data"),
        },
        check=False,
    )
    output = done.stdout + done.stderr
    found = re.search(r"received \d+ of \d+ records; committed offset \S+; lost \d+[^\n]*", output)
    assert found, f"the reproduction did not report:\n{output[-3000:]}"
    return done.returncode, found.group(0)


def test_faust_as_released_loses_the_waiting_records(stack: Stack, tmp_path: Path) -> None:
    """The reproduction still reproduces (if this fails, faust-streaming fixed
    it: check worker/faust/fetch.py against the new version)."""
    code, report = reproduce(stack, tmp_path)
    assert code == 1, report
    assert "committed offset 110; lost 100" in report, report


def test_with_the_worker_fixes_nothing_is_lost(stack: Stack, tmp_path: Path) -> None:
    code, report = reproduce(stack, tmp_path, "--worker-fixes")
    assert code == 0, report
    assert report.startswith("received 110 of 110 records; committed offset 110; lost 0"), report
