"""deploy/local/stack.sh says what is wrong instead of hanging."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.support import REPO

STACK = REPO / "deploy" / "local" / "stack.sh"


def _stack(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(STACK), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STACK_DIR": str(tmp_path / "stack"), **env},
    )


def test_stopping_when_nothing_runs(tmp_path: Path) -> None:
    result = _stack(["down"], tmp_path)
    assert result.returncode == 0
    assert "nothing to stop" in result.stdout


def test_a_port_already_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _stack(["up"], tmp_path, KAFKA_PORT=str(port))
    assert result.returncode == 1
    assert f"port {port} is already in use" in result.stderr


def test_missing_java_or_maven(tmp_path: Path) -> None:
    # A PATH with the shell tools the script needs, but neither java nor mvn.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "sed", "cat", "mkdir", "rm", "grep", "tail"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    result = _stack(["up"], tmp_path, PATH=str(bin_dir))
    assert result.returncode == 1
    assert "java not found" in result.stderr

    (bin_dir / "java").symlink_to(shutil.which("java") or "/usr/bin/java")
    result = _stack(["up"], tmp_path, PATH=str(bin_dir))
    assert result.returncode == 1
    assert "mvn not found" in result.stderr


def test_env_when_the_stack_is_not_up(tmp_path: Path) -> None:
    result = _stack(["env"], tmp_path)
    assert result.returncode == 1
    assert "not up" in result.stderr
