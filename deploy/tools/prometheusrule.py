"""Writes the Kubernetes PrometheusRule from the Prometheus alert rules file.

deploy/prometheus/alerts.yaml is the one source of the alert rules (the
compose stack's Prometheus loads it as is). The Prometheus Operator wants the
same groups wrapped in a PrometheusRule resource:
deploy/kubernetes/components/monitoring/prometheusrule.yaml, written by this
script. Run it after changing the alerts (`make prometheusrule`):

    python deploy/tools/prometheusrule.py           # (re)write the resource
    python deploy/tools/prometheusrule.py --check   # exit 1 if it is stale

tests/deploy checks that the committed resource is up to date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
TARGET = REPO / "deploy" / "kubernetes" / "components" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by deploy/tools/prometheusrule.py
# (`make prometheusrule`): edit the alerts there, then regenerate this file.
# The alert rules for the Prometheus Operator; they expect the workers to be
# scraped as job "kinesis-destination" (podmonitor.yaml does).
"""


class _Dumper(yaml.SafeDumper):
    """Block style, with list items indented under their key (as yamllint likes it)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(alerts_text: str) -> str:
    rules = yaml.safe_load(alerts_text)
    if not isinstance(rules, dict) or not isinstance(rules.get("groups"), list):
        raise ValueError(f"{ALERTS.relative_to(REPO)}: expected a mapping with a 'groups' list")
    resource: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "kinesis-destination",
            "labels": {"app.kubernetes.io/name": "kinesis-destination"},
        },
        "spec": {"groups": rules["groups"]},
    }
    body = yaml.dump(resource, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the resource is stale")
    args = parser.parse_args(argv)
    if not ALERTS.is_file():
        print(f"error: {ALERTS.relative_to(REPO)} does not exist", file=sys.stderr)
        return 1
    wanted = render(ALERTS.read_text(encoding="utf-8"))
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.is_file() else ""
        if current != wanted:
            print(
                f"{TARGET.relative_to(REPO)} is not up to date with "
                f"{ALERTS.relative_to(REPO)}: run `make prometheusrule`",
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(wanted, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
