"""deploy/compose.yaml: valid for Docker Compose v2, complete and consistent.

Validation is compose-go's, the loader Docker Compose v2 is built on
(deploy/tools/composecheck): the Compose Specification schema, interpolation,
typed decoding and consistency checks, with warnings as errors. The checks
below are about this stack: what it mounts exists, and the services agree
with the worker configuration, the Prometheus scrape config and Grafana's
provisioning.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.deploy.helpers import COMPOSE_ENV, DEPLOY, REPO, composecheck_args, run
from worker.settings import Settings, load_settings

WORKERS = ("worker-1", "worker-2")
EXPECTED_SERVICES = {"kafka", "kinesis", "init", *WORKERS, "prometheus", "grafana"}
WORKER_CONFIG_TARGET = "/etc/kinesis-destination/config.yaml"
DATA_DIR = "/var/lib/kinesis-destination"


def services(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = project["services"]
    return found


def binds(service: dict[str, Any]) -> dict[str, Path]:
    """Bind mounts of a service: container target -> host source (absolute)."""
    return {
        volume["target"]: Path(volume["source"])
        for volume in service.get("volumes") or []
        if volume["type"] == "bind"
    }


def seconds(duration: str) -> float:
    """A Go duration as compose-go prints it (1m30s, 30s, 500ms) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, duration
    return sum(float(value) * units[unit] for value, unit in parts)


def worker_settings(project: dict[str, Any], name: str) -> Settings:
    service = services(project)[name]
    config = binds(service)[WORKER_CONFIG_TARGET]
    environment = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    return load_settings(config, environ=environment)


def test_compose_file_is_valid_for_docker_compose(compose_project: dict[str, Any]) -> None:
    assert compose_project["name"] == "kinesis-destination"
    assert set(services(compose_project)) == EXPECTED_SERVICES


def test_composecheck_does_catch_problems(composecheck: Path, tmp_path: Path) -> None:
    good = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    broken = {
        "unknown key": good.replace(
            "    hostname: kafka\n", "    hostname: kafka\n    hostnme: x\n"
        ),
        "bad condition": good.replace("service_completed_successfully", "service_done", 1),
        "undefined service": good.replace(
            "      kinesis:\n        condition", "      kinesys:\n        condition"
        ),
        "obsolete version (a warning)": 'version: "3.8"\n' + good,
    }
    for what, text in broken.items():
        assert text != good, what
        path = tmp_path / "compose.yaml"
        path.write_text(text, encoding="utf-8")
        result = run([composecheck, *composecheck_args(COMPOSE_ENV), path])
        assert result.returncode != 0, f"composecheck accepted a compose file with {what}"


def test_images_are_pinned(compose_project: dict[str, Any]) -> None:
    for name, service in services(compose_project).items():
        if "build" in service:
            build = service["build"]
            assert Path(build["context"]) == REPO, (name, build)
            assert build["dockerfile"] == "deploy/Dockerfile", (name, build)
            continue
        image = service["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag not in ("", "latest"), f"{name}: image {image!r} is not pinned to a version tag"


def test_long_running_services_have_health_checks(compose_project: dict[str, Any]) -> None:
    for name, service in services(compose_project).items():
        healthcheck = service.get("healthcheck") or {}
        if name == "init":
            assert service["restart"] == "no"
            continue
        assert healthcheck.get("test"), f"{name} has no health check"
        assert not healthcheck.get("disable"), f"{name}'s health check is disabled"
        test = healthcheck["test"]
        if test[0] == "CMD" and test[1] == "python":
            compile(test[3], f"{name} healthcheck", "exec")  # the -c snippet is valid Python


def test_start_order_waits_for_health_and_init(compose_project: dict[str, Any]) -> None:
    found = services(compose_project)

    def conditions(name: str) -> dict[str, str]:
        return {
            dep: spec["condition"] for dep, spec in (found[name].get("depends_on") or {}).items()
        }

    assert conditions("init") == {"kafka": "service_healthy", "kinesis": "service_healthy"}
    for worker in WORKERS:
        assert conditions(worker) == {"init": "service_completed_successfully"}
    assert conditions("grafana") == {"prometheus": "service_healthy"}


def test_everything_mounted_exists_in_the_repository(compose_project: dict[str, Any]) -> None:
    missing = []
    for name, service in services(compose_project).items():
        for target, source in binds(service).items():
            assert source.is_relative_to(REPO), f"{name}: {source} is outside the repository"
            if not source.exists():
                missing.append(f"{name}: {source.relative_to(REPO)} (mounted at {target})")
    assert not missing, "mounted but missing:\n" + "\n".join(missing)
    grafana = binds(services(compose_project)["grafana"])
    provisioning = grafana["/etc/grafana/provisioning"]
    for needed in ("datasources/prometheus.yaml", "dashboards/dashboards.yaml"):
        assert (provisioning / needed).is_file(), f"grafana/provisioning/{needed} is missing"
    dashboards = grafana["/var/lib/grafana/dashboards"]
    assert sorted(dashboards.glob("*.json")), "grafana/dashboards holds no dashboard (*.json)"


def test_workers_share_one_configuration_that_the_worker_accepts(
    compose_project: dict[str, Any],
) -> None:
    found = services(compose_project)
    configs = {binds(found[w])[WORKER_CONFIG_TARGET] for w in WORKERS}
    assert configs == {REPO / "config" / "compose.yaml"}
    for worker in WORKERS:
        service = found[worker]
        settings = worker_settings(compose_project, worker)
        assert not [k for k in service.get("environment") or {} if k.startswith("KD_")]
        assert settings.runtime.store == "rocksdb://"
        volumes = {v["target"]: v for v in service["volumes"]}
        assert volumes[DATA_DIR]["type"] == "volume", f"{worker}: state on a named volume"
        assert [p["target"] for p in service["ports"]] == [settings.runtime.web_port]
        probe = " ".join(service["healthcheck"]["test"])
        assert f":{settings.runtime.web_port}/readyz" in probe, probe
        grace = seconds(service["stop_grace_period"])
        assert grace > settings.runtime.shutdown_timeout_s, (
            f"{worker}: stop_grace_period {grace}s must exceed runtime.shutdown_timeout_s "
            f"{settings.runtime.shutdown_timeout_s}s, or Docker kills the worker mid-drain"
        )
    data_volumes = {
        v["source"] for w in WORKERS for v in found[w]["volumes"] if v["target"] == DATA_DIR
    }
    assert len(data_volumes) == len(WORKERS), "each worker needs its own data volume"


def test_init_creates_what_the_workers_need(compose_project: dict[str, Any]) -> None:
    found = services(compose_project)
    init = found["init"]
    env = init["environment"]
    settings = worker_settings(compose_project, WORKERS[0])
    assert env["INIT_TOPICS"].split(",") == [
        settings.kafka.qualifications_topic,
        settings.kafka.profiles_topic,
    ]
    assert len(WORKERS) <= int(env["INIT_PARTITIONS"]), "more workers than partitions"
    assert {d.stream for d in settings.destinations} <= set(env["INIT_STREAMS"].split(","))
    assert env["INIT_KAFKA_BOOTSTRAP"] == settings.kafka.bootstrap_servers
    for destination in settings.destinations:
        assert destination.endpoint_url == env["INIT_KINESIS_ENDPOINT"]
        host = urlsplit(env["INIT_KINESIS_ENDPOINT"]).hostname
        assert host in found, f"{host} is not a service of the stack"
    assert settings.kafka.bootstrap_servers.split(":")[0] in found
    script = binds(init)[init["entrypoint"][1]]
    assert script == DEPLOY / "compose" / "init.py"


def test_init_script_runs_in_the_worker_image(compose_project: dict[str, Any]) -> None:
    init = services(compose_project)["init"]
    assert init["image"] == services(compose_project)[WORKERS[0]]["image"]
    # Only modules the image installs (aiokafka, boto3) besides the standard library.
    source = (DEPLOY / "compose" / "init.py").read_text(encoding="utf-8")
    imported = set(re.findall(r"^(?:from|import) ([a-zA-Z_0-9]+)", source, flags=re.MULTILINE))
    assert imported - set(sys.stdlib_module_names) <= {"aiokafka", "boto3", "__future__"}


def prometheus_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        (DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    )
    return loaded


def test_prometheus_scrapes_both_workers(compose_project: dict[str, Any]) -> None:
    config = prometheus_config()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["kinesis-destination"]
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    assert targets == {f"{w}:6066" for w in WORKERS}
    assert job.get("metrics_path", "/metrics") == "/metrics"
    prometheus = binds(services(compose_project)["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus" / "prometheus.yml"
    for rule_file in config["rule_files"]:
        assert prometheus.get(rule_file) == DEPLOY / "prometheus" / "alerts.yaml", (
            f"rule file {rule_file} is not the mounted deploy/prometheus/alerts.yaml"
        )


def test_prometheus_config_passes_promtool(promtool: Path, tmp_path: Path) -> None:
    # The rule file at its path in the repository instead of in the container.
    config = prometheus_config()
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yaml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run([promtool, "check", "config", path])
    assert result.returncode == 0, f"promtool check config:\n{result.stdout}{result.stderr}"


def test_grafana_provisioning_matches_the_stack(compose_project: dict[str, Any]) -> None:
    found = services(compose_project)
    grafana = binds(found["grafana"])
    provisioning = grafana["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    prometheus = next(d for d in datasources["datasources"] if d["type"] == "prometheus")
    assert prometheus["uid"] == "prometheus"
    url = urlsplit(prometheus["url"])
    assert url.hostname == "prometheus"
    assert url.hostname in found
    assert url.port == 9090
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())
    paths = {p["options"]["path"] for p in providers["providers"]}
    assert paths == {"/var/lib/grafana/dashboards"}
    assert "/var/lib/grafana/dashboards" in grafana


def test_no_host_port_is_published_beyond_loopback(compose_project: dict[str, Any]) -> None:
    for name, service in services(compose_project).items():
        for port in service.get("ports") or []:
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port} is open to the network"


def test_grafana_has_no_default_admin_password(composecheck: Path) -> None:
    result = run([composecheck, DEPLOY / "compose.yaml"])
    assert result.returncode != 0, "the stack loads without GRAFANA_ADMIN_PASSWORD"
    assert "required variable GRAFANA_ADMIN_PASSWORD is missing a value" in result.stderr
    empty = run([composecheck, "-env", "GRAFANA_ADMIN_PASSWORD=", DEPLOY / "compose.yaml"])
    assert empty.returncode != 0, "the stack loads with an empty GRAFANA_ADMIN_PASSWORD"


def test_grafana_admin_comes_from_the_environment_and_anonymous_users_only_view(
    compose_project: dict[str, Any],
) -> None:
    environment = services(compose_project)["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == COMPOSE_ENV["GRAFANA_ADMIN_PASSWORD"]
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert environment["GF_USERS_ALLOW_SIGN_UP"] == "false"
    # Nothing the stack reads from the environment has a default in the file.
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    assert not re.findall(r"\$\{[A-Z_]+:?-", text), "a variable with a default value"


def test_no_service_keeps_capabilities_or_can_gain_privileges(
    compose_project: dict[str, Any],
) -> None:
    for name, service in services(compose_project).items():
        assert service.get("cap_drop") == ["ALL"], f"{name} keeps Linux capabilities"
        assert not service.get("cap_add"), f"{name} adds capabilities"
        assert "no-new-privileges:true" in (service.get("security_opt") or []), name
        assert not service.get("privileged"), f"{name} is privileged"
        assert service.get("user", "") not in ("0", "root"), f"{name} runs as root"


def test_worker_image_services_have_a_read_only_root(compose_project: dict[str, Any]) -> None:
    for name in (*WORKERS, "init"):
        service = services(compose_project)[name]
        assert service.get("read_only") is True, f"{name}: writable root file system"
        assert service.get("tmpfs") == ["/tmp"], name
