"""A real Prometheus scrapes two live workers through an end-to-end run; every
dashboard panel's query and every alert rule is then evaluated by it.

Prometheus comes from Debian's package (deploy/local/prometheus.sh). The run
exports through a fault proxy that throttles part of the records, writes dead
letters, and has two workers share the partitions, so the delivery, error and
per-instance panels all have data.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness import SEG_A, SEG_B, Deployment, ecid, unique
from tests.support import (
    REPO,
    ProxyThread,
    Stack,
    WorkerProcess,
    free_port,
    profile_update,
    prometheus_tool,
    qualification,
)

DASHBOARDS = REPO / "grafana" / "dashboards"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
PROFILES = 300


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": "kinesis-destination", "static_configs": [{"targets": targets}]}
            ],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(prometheus_tool("prometheus")),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready:\n{self.log()}"
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        result: list[Any] = self.api("query", query=expr)["result"]
        return result

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every target of every panel, rows included."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())

        def walk(panels: list[Any], title: str = dashboard["title"]) -> None:
            for panel in panels:
                walk(panel.get("panels", []))
                for target in panel.get("targets", []):
                    if target.get("expr"):
                        found.append((title, panel.get("title", "?"), target["expr"]))

        walk(dashboard.get("panels", []))
    assert found, f"no panel queries found in {DASHBOARDS}"
    return found


def concrete(expr: str) -> str:
    """Grafana's variables replaced as Grafana would on a 5-minute view of everything."""
    for name in ("__rate_interval", "__interval", "__range"):
        expr = expr.replace(f"${{{name}}}", "5m").replace(f"${name}", "5m")
    # Template variables: the job by name, the rest (instance, destination) all values.
    values = {"job": "kinesis-destination"}
    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", lambda m: values.get(m[1], ".*"), expr)


@pytest.fixture
def live(stack: Stack, tmp_path: Path) -> Iterator[tuple[Deployment, list[WorkerProcess], Any]]:
    with (
        Deployment(stack, unique("it-obs"), tmp_path, partitions=4) as deployment,
        ProxyThread(stack.kinesis_endpoint) as proxy,
    ):
        workers = [deployment.worker(f"worker-{i}", endpoint_url=proxy.url) for i in range(2)]
        try:
            for worker in workers:
                worker.start(wait_ready=False)
            for worker in workers:
                worker.wait_ready()
            yield deployment, workers, proxy
        finally:
            for worker in deployment.workers:
                worker.stop()


def total(workers: list[WorkerProcess], name: str, **labels: str) -> float:
    return sum(worker.metric(name, **labels) for worker in workers)


def test_every_dashboard_panel_and_alert_rule_has_live_data(
    live: tuple[Deployment, list[WorkerProcess], Any], tmp_path: Path
) -> None:
    deployment, workers, proxy = live
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{w.port}" for w in workers])
    try:
        proxy.proxy.faults.throttle_share = 0.2
        profiles = [f"obs-{i:04d}" for i in range(PROFILES)]
        messages: list[tuple[str, bytes | None, bytes | None]] = [
            (deployment.p_topic, p.encode(), profile_update(p, {"person": {"email": p}}, ecid(p)))
            for p in profiles
        ]
        deployment.send_raw(messages)
        sent = len(messages)
        wait_for(lambda: total(workers, "kd_events_total") >= sent, workers)
        qualifications: list[tuple[str, bytes | None, bytes | None]] = [
            (deployment.q_topic, p.encode(), qualification(p, segment, "realized", when))
            for p in profiles
            for segment, when in ((SEG_A, "2021-01-01T00:00:00Z"), (SEG_B, "2021-01-01T00:00:01Z"))
        ]
        qualifications += [(deployment.q_topic, b"bad", b"{not json")] * 3
        deployment.send_raw(qualifications)
        sent += len(qualifications)
        wait_for(lambda: total(workers, "kd_events_total") >= sent, workers)
        assert total(workers, "kd_dead_letters_total", reason="invalid_json") == 3
        assert total(workers, "kd_throttles_total") > 0, "the proxy throttled nothing?"
        proxy.proxy.faults.throttle_share = 0.0

        # Both workers are scraped, and a few more scrapes land after the run.
        deadline = time.monotonic() + 60
        while len(prometheus.query('up{job="kinesis-destination"} == 1')) < len(workers):
            assert time.monotonic() < deadline, prometheus.log()
            time.sleep(0.5)
        time.sleep(5)

        queries = panel_queries()
        empty = []
        for dashboard, title, expr in queries:
            if not prometheus.query(concrete(expr)):
                empty.append(f"{dashboard} / {title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)

        rules = prometheus.api("rules")["groups"]
        loaded = [rule for group in rules for rule in group["rules"]]
        configured = yaml.safe_load(ALERTS.read_text())
        expected = sum(len(group["rules"]) for group in configured["groups"])
        assert len(loaded) == expected
        broken = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
        assert not broken, broken
        # Dead letters were written: that alert must be on its way.
        active = {r["name"]: r["state"] for r in loaded if r["state"] != "inactive"}
        assert any("DeadLetter" in name for name in active), active
        print(f"[observability] {len(queries)} panel queries with data; rules {active}")
    finally:
        prometheus.stop()

    # Faust's pages exposing table contents are not served.
    for worker in workers:
        assert worker.get("/table")[0] == 404
        assert worker.get("/router")[0] == 404
        assert worker.get("/healthz")[0] == 200
        assert worker.get("/readyz")[0] == 200


def wait_for(condition: Any, workers: list[WorkerProcess], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "\n".join(w.log(40) for w in workers)
        time.sleep(0.2)
