"""Monitoring artifacts: alert rules, their unit tests, Grafana dashboards and provisioning.

promtool comes from `deploy/local/prometheus.sh` (`make tools` installs it; `make test`
and `make unit` do so first) or from $PROMTOOL. Without it these tests fail, never skip.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import PROCESS_COLLECTOR
from prometheus_client.metrics import MetricWrapperBase

import worker.metrics
from grafana import generate

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
PROVISIONING = ROOT / "grafana" / "provisioning"
DOCS = ROOT / "docs" / "observability.md"
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series


# -- promtool ----------------------------------------------------------------------


def run_promtool(promtool: Path, *args: str) -> str:
    result = subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"promtool {' '.join(args)} failed:\n{output}", pytrace=False)
    return output


# -- what the artifacts hold -------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


@dataclass(frozen=True)
class Expression:
    where: str
    expr: str  # concrete: Grafana variables substituted


def dashboard_expressions() -> list[Expression]:
    return [
        Expression(f"{q.dashboard} / {q.panel} / {q.ref_id}", generate.substitute(q.expr))
        for q in generate.committed_queries()
    ]


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def variable_selectors() -> list[tuple[Expression, str]]:
    """(selector, label) of every label_values() template variable."""
    found = []
    for name, variable, query in generate.variable_queries(generate.load_dashboards()):
        match = _LABEL_VALUES.match(query.strip())
        assert match, f"{name}: variable {variable}: not label_values(selector, label): {query}"
        selector = generate.substitute(match["selector"])
        found.append((Expression(f"{name} / variable {variable}", selector), match["label"]))
    return found


def all_expressions() -> list[Expression]:
    alerts = [Expression(f"alerts.yaml / {r['alert']}", r["expr"]) for r in alert_rules()]
    variables = [expression for expression, _ in variable_selectors()]
    return alerts + dashboard_expressions() + variables


# -- the metric catalogue ----------------------------------------------------------


def catalogue() -> dict[str, frozenset[str]]:
    """Every series name the worker exposes (worker/metrics.py, process_*) and `up` → labels."""
    names: dict[str, frozenset[str]] = {"up": TARGET_LABELS}
    for value in vars(worker.metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        name, kind = value._name, value._type
        labels = TARGET_LABELS | frozenset(value._labelnames)
        if kind == "counter":
            names[f"{name}_total"] = labels
        elif kind == "histogram":
            names[f"{name}_bucket"] = labels | {"le"}
            names[f"{name}_sum"] = labels
            names[f"{name}_count"] = labels
        else:
            names[name] = labels
    for family in PROCESS_COLLECTOR.collect():
        for sample in family.samples:
            names[sample.name] = TARGET_LABELS | frozenset(sample.labels)
    return names


# -- a small PromQL reader: enough to find metric names and label names ------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d[\w.]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<matchers>\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})
  | (?P<other>.)
    """,
    re.VERBOSE,
)
_AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ]
)
_GROUPING = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
_KEYWORDS = (
    frozenset(["and", "or", "unless", "offset", "bool", "inf", "nan"]) | _AGGREGATIONS | _GROUPING
)
_MATCHER = re.compile(r'\s*(\w+)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*(?:,|$)')


@dataclass(frozen=True)
class Selector:
    metric: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Parsed:
    selectors: tuple[Selector, ...]
    grouping_labels: tuple[str, ...]


def parse(expr: str) -> Parsed:
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]
    selectors: list[Selector] = []
    grouping: list[str] = []

    def after(i: int) -> tuple[str | None, str]:
        return tokens[i + 1] if i + 1 < len(tokens) else (None, "")

    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "matchers":
            raise AssertionError(f"a selector without a metric name: {text}")
        if kind == "ident" and text in _GROUPING and after(i)[1] == "(":
            end = next(j for j in range(i, len(tokens)) if tokens[j][1] == ")")
            grouping += [t for k, t in tokens[i + 2 : end] if k == "ident"]
            i = end + 1
            continue
        if kind == "ident" and text not in _KEYWORDS and after(i)[1] != "(":
            labels: list[str] = []
            if after(i)[0] == "matchers":
                body = after(i)[1][1:-1]
                matched = list(_MATCHER.finditer(body))
                assert "".join(m.group() for m in matched) == body, f"bad matchers {{{body}}}"
                labels = [m.group(1) for m in matched]
                i += 1
            selectors.append(Selector(text, tuple(labels)))
        i += 1
    return Parsed(tuple(selectors), tuple(grouping))


def test_the_promql_reader_finds_metrics_and_labels() -> None:
    parsed = parse(
        'sum by (destination, le) (rate(kd_x_bucket{job="j", a=~"b,c}"}[5m] offset 1h))'
        " / on (job) group_left max(up) > bool 0.5 and deriv(sum(y)[15m:1m]) > 1e3"
    )
    assert parsed.selectors == (
        Selector("kd_x_bucket", ("job", "a")),
        Selector("up", ()),
        Selector("y", ()),
    )
    assert parsed.grouping_labels == ("destination", "le", "job")


# -- alert rules -------------------------------------------------------------------


def test_alert_rules_pass_promtool_check(promtool: Path) -> None:
    output = run_promtool(promtool, "check", "rules", str(ALERTS))
    assert "SUCCESS" in output


def test_alert_rules_pass_their_unit_tests(promtool: Path) -> None:
    output = run_promtool(promtool, "test", "rules", str(ALERTS_TEST))
    assert "SUCCESS" in output


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    document = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    cases = [case for test in document["tests"] for case in test.get("alert_rule_test", [])]
    for rule in alert_rules():
        name = rule["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name}: no test where it fires"
        assert any(not case.get("exp_alerts") for case in mine), (
            f"{name}: no test where it is quiet"
        )


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", docs, re.MULTILINE)}
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations.get("summary"), name
        assert annotations.get("description"), name
        runbook = annotations.get("runbook", "")
        page, _, anchor = runbook.partition("#")
        assert page == "docs/observability.md", f"{name}: runbook {runbook!r}"
        assert anchor in anchors, f"{name}: no heading for #{anchor} in {DOCS.name}"


# -- dashboards --------------------------------------------------------------------


def test_committed_dashboards_and_docs_are_what_the_generator_makes() -> None:
    wanted = generate.generate()
    committed = {
        p.name: p.read_text(encoding="utf-8") for p in generate.DASHBOARDS_DIR.glob("*.json")
    }
    assert sorted(committed) == sorted(wanted), "run: python grafana/generate.py"
    for name, text in wanted.items():
        assert committed[name] == text, (
            f"grafana/dashboards/{name} is stale: run python grafana/generate.py"
        )
    assert generate.generate() == wanted, "the generator is not deterministic"
    docs = DOCS.read_text(encoding="utf-8")
    assert generate.docs_with_panels(docs) == docs, (
        f"the list of panels in {DOCS.name} is stale: run python grafana/generate.py"
    )


def test_dashboards_are_well_formed() -> None:
    dashboards = generate.load_dashboards()
    assert set(dashboards) == {"overview.json", "delivery.json", "state.json"}
    uids = [model["uid"] for model in dashboards.values()]
    assert len(uids) == len(set(uids))
    for name, model in dashboards.items():
        panels = list(generate.iter_panels(model))
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{name}: panel ids are not unique"
        variables = {v["name"] for v in model["templating"]["list"]}
        assert {"datasource", "job", "instance"} <= variables, name
        cells: set[tuple[int, int]] = set()
        for panel in panels:
            where = f"{name} / {panel['title']}"
            pos = panel["gridPos"]
            assert 0 <= pos["x"] < pos["x"] + pos["w"] <= 24, where
            mine = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not mine & cells, f"{where}: overlaps another panel"
            cells |= mine
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == generate.DATASOURCE, where
            assert panel["targets"], f"{where}: no query"
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), where
            for target in panel["targets"]:
                assert target["datasource"] == generate.DATASOURCE, where
                assert target["expr"].strip(), where
                for variable in re.findall(r"\$\{?(\w+)", target["expr"]):
                    assert variable.startswith("__") or variable in variables, (
                        f"{where}: ${variable} is not a variable of the dashboard"
                    )


def test_every_query_and_alert_is_valid_promql(promtool: Path, tmp_path: Path) -> None:
    expressions = all_expressions()
    groups = [
        {"name": e.where, "rules": [{"record": f"check:expr_{i}", "expr": e.expr}]}
        for i, e in enumerate(expressions)
    ]
    rules = tmp_path / "expressions.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    output = run_promtool(promtool, "check", "rules", str(rules))
    assert f"SUCCESS: {len(expressions)} rules found" in output


def _cases() -> Iterator[Any]:
    for expression in all_expressions():
        yield pytest.param(expression, id=expression.where)


@pytest.mark.parametrize("expression", list(_cases()))
def test_every_query_uses_only_catalogued_metrics_and_labels(expression: Expression) -> None:
    known = catalogue()
    parsed = parse(expression.expr)
    assert parsed.selectors, f"no metric in {expression.expr}"
    used: set[str] = set()
    for selector in parsed.selectors:
        assert selector.metric in known, (
            f"{selector.metric} is not exposed by the worker (worker/metrics.py): {expression.expr}"
        )
        labels = known[selector.metric]
        used |= labels
        for label in selector.labels:
            assert label in labels, f"{selector.metric} has no label {label}: {expression.expr}"
    for label in parsed.grouping_labels:
        assert label in used, f"no metric of the query has label {label}: {expression.expr}"


def test_variables_select_existing_labels() -> None:
    known = catalogue()
    for expression, label in variable_selectors():
        (selector,) = parse(expression.expr).selectors
        assert label in known[selector.metric], (
            f"{expression.where}: {selector.metric} has no {label}"
        )


# -- provisioning ------------------------------------------------------------------


def test_datasource_provisioning() -> None:
    document = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert source["name"] == "Prometheus"
    assert source["uid"] == "prometheus"
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    # what the dashboards' datasource variable defaults to
    for model in generate.load_dashboards().values():
        (variable,) = [v for v in model["templating"]["list"] if v["name"] == "datasource"]
        assert variable["current"]["value"] == source["uid"]


def test_dashboard_provisioning() -> None:
    document = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# -- documentation -----------------------------------------------------------------


def test_docs_cover_every_metric_dashboard_panel_and_alert() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    missing = [
        value._name if value._type != "counter" else f"{value._name}_total"
        for value in vars(worker.metrics).values()
        if isinstance(value, MetricWrapperBase)
    ]
    missing += [rule["alert"] for rule in alert_rules()]
    for name, model in generate.load_dashboards().items():
        missing += [name, model["title"]]
        missing += [p["title"] for p in generate.iter_panels(model) if p["type"] != "row"]
    absent = sorted({item for item in missing if item not in docs})
    assert not absent, f"{DOCS.name} does not mention: {absent}"
    flat = " ".join(docs.split())
    for rule in alert_rules():
        assert " ".join(rule["expr"].split()) in flat, f"{DOCS.name}: {rule['alert']}'s expr"
