"""The package's layers: what each part may import (README, Layout)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

WORKER = REPO / "worker"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
    return found


def test_the_delivery_package_imports_nothing_else_from_the_worker() -> None:
    # worker/kinesis is the wire and the writer: it takes a TransportConfig of
    # its own, not the configuration format.
    outside = {
        f"{path.name}: {module}"
        for path in (WORKER / "kinesis").glob("*.py")
        for module in imported_modules(path)
        if module.startswith("worker") and not module.startswith("worker.kinesis")
    }
    assert outside == set()


def test_pure_modules_do_no_io_and_know_no_faust() -> None:
    pure = ["events", "membership", "xdm", "export", "vocabulary", "deadletters", "budget"]
    for name in pure:
        modules = imported_modules(WORKER / f"{name}.py")
        heavy = {m for m in modules if m.split(".")[0] in {"faust", "mode", "aiokafka", "aiohttp"}}
        assert heavy == set(), f"worker/{name}.py imports {heavy}"


def test_check_and_the_configuration_never_load_faust() -> None:
    # `check` runs where the worker's dependencies may be half there (a CI job,
    # an init container): it needs the configuration, aiokafka and boto only.
    code = (
        "import sys\n"
        "from worker.__main__ import build_parser\n"
        "build_parser().parse_args(['check', '--config', 'x.yaml'])\n"
        "from worker import check, settings\n"
        "settings.load_settings('config/example.yaml')\n"
        "assert 'faust' not in sys.modules, 'faust loaded'\n"
        "assert 'mode' not in sys.modules, 'mode loaded'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    help_text = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "worker", "check", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert help_text.returncode == 0
    assert " faust" not in help_text.stderr, "python -m worker check --help loaded faust"
