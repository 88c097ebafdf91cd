"""deploy/local/stack.sh says what is wrong instead of hanging."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.support import REPO, Stack

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


@pytest.mark.parametrize("secured", [False, True], ids=["started-by-an-older-stack-sh", "current"])
def test_up_when_the_broker_already_runs(tmp_path: Path, stack: Stack, secured: bool) -> None:
    """`up` leaves a running broker alone; `env` gives the secured listeners it really has.

    A stand-in process plays the running broker and endpoint (their pid files);
    the probes reach the real stack's ports.
    """
    folder = tmp_path / "stack"
    folder.mkdir()
    kafka_port = stack.kafka_bootstrap.rsplit(":", 1)[1]
    listeners = f"PLAINTEXT://127.0.0.1:{kafka_port},CONTROLLER://127.0.0.1:1"
    if secured:
        listeners += ",SASL_PLAINTEXT://127.0.0.1:2,SASL_SSL://127.0.0.1:3,SSL://127.0.0.1:4"
    (folder / "server.properties").write_text(f"node.id=1\nlisteners={listeners}\n")
    stand_in = subprocess.Popen(["sleep", "120"])
    try:
        for name in ("kafka", "kinesis"):
            (folder / f"{name}.pid").write_text(str(stand_in.pid))
        ports = {
            "KAFKA_PORT": kafka_port,
            "KINESIS_PORT": str(urlparse(stack.kinesis_endpoint).port),
        }
        result = _stack(["up"], tmp_path, **ports)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "kafka already running" in result.stdout
        env = _stack(["env"], tmp_path).stdout
    finally:
        stand_in.kill()
        stand_in.wait()
    assert f"export KAFKA_BOOTSTRAP=127.0.0.1:{kafka_port}\n" in env
    if secured:
        assert "without the SASL/TLS test listeners" not in result.stdout
        assert "export KAFKA_SASL_BOOTSTRAP=127.0.0.1:2\n" in env
        assert "export KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:3\n" in env
        assert "export KAFKA_SSL_BOOTSTRAP=127.0.0.1:4\n" in env
        assert f"export KAFKA_TLS_DIR={folder}/tls\n" in env
    else:
        assert "started without the SASL/TLS test listeners" in result.stdout
        assert "KAFKA_SASL_BOOTSTRAP" not in env
