"""yamllint over the deployment, configuration and provisioning YAML."""

from __future__ import annotations

from pathlib import Path

from tests.deploy.helpers import REPO, run

LINTED = ["deploy", "config", "grafana/provisioning", ".yamllint"]


def test_yaml_passes_yamllint_strict(yamllint: Path) -> None:
    result = run(
        [yamllint, "--strict", "--format", "parsable", "-c", REPO / ".yamllint", *LINTED],
        cwd=REPO,
    )
    assert result.returncode == 0, (
        f"yamllint --strict {' '.join(LINTED)}:\n{result.stdout}{result.stderr}"
    )


def test_yamllint_lints_the_files_it_should(yamllint: Path) -> None:
    # yamllint --list-files: what the configuration's yaml-files patterns pick up.
    result = run([yamllint, "--list-files", "-c", REPO / ".yamllint", *LINTED], cwd=REPO)
    assert result.returncode == 0, result.stderr
    listed = {Path(line).as_posix() for line in result.stdout.split()}
    for expected in (
        "deploy/compose.yaml",
        "deploy/prometheus/prometheus.yml",
        "deploy/kubernetes/base/statefulset.yaml",
        "deploy/kubernetes/overlays/example/kustomization.yaml",
        "config/compose.yaml",
        "grafana/provisioning/datasources/prometheus.yaml",
        ".yamllint",
    ):
        assert expected in listed, f"yamllint does not lint {expected}"
