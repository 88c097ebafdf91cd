"""deploy/kubernetes: renders, validates strictly, and follows the operating rules.

- `kustomize build` of the base and of overlays/example;
- core resources: `kubernetes-validate --strict` (unknown fields are errors)
  against the oldest and newest Kubernetes versions we claim;
- custom resources (KEDA ScaledObject, Prometheus Operator PodMonitor and
  PrometheusRule): against the openAPIV3Schema of their CRDs (fetched by
  deploy/tools/install.sh from the projects' Go modules), made strict the way
  `kubectl apply` (server-side field validation "Strict") is: unknown fields
  are errors unless the schema preserves them;
- no rendered resource goes unvalidated;
- the rules of docs/operations.md: probes, grace period vs shutdown_timeout_s,
  security context, replicas vs partitions, IRSA, config the worker accepts,
  the NetworkPolicy (Kafka, HTTPS and DNS out; the web port from monitoring in).
"""

from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from tests.deploy.helpers import DEPLOY, OVERLAYS, Manifest, run
from worker.settings import Settings, load_settings

# Validated against both ends: what a still-supported older cluster has and the
# newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30", "1.37")
CUSTOM_GROUPS = {"keda.sh", "monitoring.coreos.com"}
EXAMPLE_PARTITIONS = 8  # the example's input topics (overlays/example/config.yaml)
NAME = "kinesis-destination"


def is_custom(doc: Manifest) -> bool:
    return str(doc["apiVersion"]).split("/")[0] in CUSTOM_GROUPS


def only(docs: list[Manifest], kind: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def worker_container(docs: list[Manifest]) -> dict[str, Any]:
    containers = only(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    container: dict[str, Any] = next(c for c in containers if c["name"] == "worker")
    return container


def configured(docs: list[Manifest], tmp_path: Path) -> Settings:
    """The worker settings of a rendered deployment: its ConfigMap and its env."""
    sts = only(docs, "StatefulSet")
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    configmap_name = volumes["config"]["configMap"]["name"]
    configmap = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == configmap_name
    )
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"], encoding="utf-8")
    # Optional Secrets are absent, as in the IRSA deployment the example is;
    # test_secret_variables_name_configuration_keys checks their names.
    environ = {
        env["name"]: env["value"] for env in worker_container(docs).get("env", []) if "value" in env
    }
    return load_settings(path, environ=environ)


def test_secret_variables_name_configuration_keys(example: list[Manifest]) -> None:
    for env in worker_container(example).get("env", []):
        model: Any = Settings
        for part in env["name"].removeprefix("KD_").lower().split("__"):
            if part.isdigit():
                continue  # a list index: the list's item model is already in hand
            field = model.model_fields.get(part)
            assert field is not None, f"{env['name']}: {part!r} is not a configuration key"
            annotation = field.annotation
            for arg in (*getattr(annotation, "__args__", ()), annotation):
                inner = getattr(arg, "__args__", (arg,))[0]
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
                    break


# -- rendering and schema validation ------------------------------------------------


@pytest.mark.parametrize("overlay", ["base", "example"])
def test_core_resources_pass_kubernetes_validate_strict(
    overlay: str, rendered: dict[str, list[Manifest]], kubernetes_validate: Path, tmp_path: Path
) -> None:
    core = [d for d in rendered[overlay] if not is_custom(d)]
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(core), encoding="utf-8")
    versions = [arg for v in KUBERNETES_VERSIONS for arg in ("-k", v)]
    result = run([kubernetes_validate, "--strict", *versions, path])
    output = result.stdout + result.stderr
    problems = [line for line in output.splitlines() if not line.startswith("INFO")]
    assert result.returncode == 0, f"kubernetes-validate --strict:\n{output}"
    assert not problems, f"kubernetes-validate --strict warned:\n{output}"
    passed = len([line for line in output.splitlines() if " passed for resource " in line])
    assert passed == len(core) * len(KUBERNETES_VERSIONS), output


def test_kubernetes_validate_strict_does_catch_unknown_fields(
    rendered: dict[str, list[Manifest]], kubernetes_validate: Path, tmp_path: Path
) -> None:
    sts = copy.deepcopy(only(rendered["example"], "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(sts), encoding="utf-8")
    result = run([kubernetes_validate, "--strict", path])
    assert result.returncode != 0, result.stdout
    assert "readinessprobe" in result.stdout, result.stdout


def strict_schema(schema: Any) -> Any:
    """An OpenAPI v3 CRD schema with unknown fields refused, as kubectl's strict validation."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        key: (value if key in ("default", "enum", "example") else strict_schema(value))
        for key, value in schema.items()
    }
    if isinstance(out.get("pattern"), str):
        out["pattern"] = python_regex(out["pattern"])
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def python_regex(pattern: str) -> str:
    """A Go (RE2) pattern for Python's re: inline flags such as ^(?i)... go first."""
    flags = "".join(re.findall(r"\(\?([ims]+)\)", pattern))
    if not flags:
        return pattern
    return f"(?{''.join(sorted(set(flags)))})" + re.sub(r"\(\?[ims]+\)", "", pattern)


@pytest.fixture(scope="session")
def crd_validators(crd_dir: Path) -> dict[tuple[str, str], Draft202012Validator]:
    validators: dict[tuple[str, str], Draft202012Validator] = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = strict_schema(version["schema"]["openAPIV3Schema"])
                Draft202012Validator.check_schema(schema)
                validators[(f"{group}/{version['name']}", kind)] = Draft202012Validator(schema)
    assert validators, f"no CRD in {crd_dir}"
    return validators


def crd_errors(validators: dict[tuple[str, str], Draft202012Validator], doc: Manifest) -> list[str]:
    key = (doc["apiVersion"], doc["kind"])
    if key not in validators:
        return [f"no CRD schema for {key}: add its CRD to deploy/tools/install.sh"]
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    return [
        f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validators[key].iter_errors(doc)
    ]


def test_custom_resources_match_their_crds(
    rendered: dict[str, list[Manifest]],
    crd_validators: dict[tuple[str, str], Draft202012Validator],
) -> None:
    custom = [d for d in rendered["example"] if is_custom(d)]
    assert {d["kind"] for d in custom} == {"ScaledObject", "PodMonitor", "PrometheusRule"}
    errors = [error for doc in custom for error in crd_errors(crd_validators, doc)]
    assert not errors, "custom resources do not match their CRDs:\n" + "\n".join(errors)


def test_crd_validation_does_catch_unknown_fields(
    rendered: dict[str, list[Manifest]],
    crd_validators: dict[tuple[str, str], Draft202012Validator],
) -> None:
    for kind, path in (
        ("ScaledObject", ["spec", "advanced"]),
        ("PodMonitor", ["spec", "podMetricsEndpoints", 0]),
    ):
        doc: Any = copy.deepcopy(only(rendered["example"], kind))
        target = doc
        for step in path:
            target = target[step]
        target["unknownField"] = 1
        assert any("unknownField" in e for e in crd_errors(crd_validators, doc)), kind


def test_every_overlay_keeps_custom_resources_out_of_the_base(
    rendered: dict[str, list[Manifest]],
) -> None:
    # The base applies to any cluster: no CRD needed. Components add them.
    assert not [d["kind"] for d in rendered["base"] if is_custom(d)]


def test_prometheusrule_is_generated_from_the_alert_rules() -> None:
    result = run([sys.executable, DEPLOY / "tools" / "prometheusrule.py", "--check"])
    assert result.returncode == 0, result.stderr


# -- the operating rules -------------------------------------------------------------


@pytest.fixture(scope="module")
def example(rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    return rendered["example"]


def test_configuration_is_one_the_worker_accepts(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    for overlay, docs in rendered.items():
        settings = configured(docs, tmp_path)
        assert settings.runtime.store == "rocksdb://", overlay
        assert settings.runtime.web_port == worker_container(docs)["ports"][0]["containerPort"]


def test_statefulset_keeps_rocksdb_state_on_a_claim(example: list[Manifest]) -> None:
    sts = only(example, "StatefulSet")
    spec = sts["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == only_headless(example)["metadata"]["name"]
    claims = {c["metadata"]["name"]: c for c in spec["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in worker_container(example)["volumeMounts"]}
    assert mounts["/var/lib/kinesis-destination"] in claims
    assert mounts["/tmp"] in {
        v["name"] for v in spec["template"]["spec"]["volumes"] if "emptyDir" in v
    }
    assert mounts["/etc/kinesis-destination"] == "config"


def only_headless(docs: list[Manifest]) -> Manifest:
    headless = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1
    return headless[0]


def test_probes(example: list[Manifest]) -> None:
    container = worker_container(example)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 6066}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 600, f"startupProbe allows {budget}s: table recovery can take longer"


def test_grace_period_exceeds_the_shutdown_timeout(example: list[Manifest], tmp_path: Path) -> None:
    settings = configured(example, tmp_path)
    grace = only(example, "StatefulSet")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert grace >= settings.runtime.shutdown_timeout_s + 10, (
        f"terminationGracePeriodSeconds {grace} must exceed runtime.shutdown_timeout_s "
        f"({settings.runtime.shutdown_timeout_s}) with a margin, or pods are killed mid-drain"
    )


def test_security_context(example: list[Manifest]) -> None:
    pod = only(example, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = worker_container(example)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}


def test_resources_have_requests_and_limits(example: list[Manifest]) -> None:
    resources = worker_container(example)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_secrets_are_optional_kd_variables(example: list[Manifest]) -> None:
    env = worker_container(example)["env"]
    for variable in env:
        assert variable["name"].startswith("KD_"), variable
        if "fieldRef" in variable["valueFrom"]:
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref["optional"] is True, f"{variable['name']}: IRSA deployments have no Secret"


def test_each_pod_is_a_static_group_member_named_after_itself(example: list[Manifest]) -> None:
    """Kafka static membership: a restarted pod keeps its name, so its instance id."""
    env = {v["name"]: v for v in worker_container(example)["env"]}
    field = env["KD_RUNTIME__INSTANCE_ID"]["valueFrom"]["fieldRef"]
    assert field["fieldPath"] == "metadata.name"


def test_service_account_is_annotated_for_irsa(example: list[Manifest]) -> None:
    account = only(example, "ServiceAccount")
    arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", arn), arn
    pod = only(example, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def selects_pods(selector: dict[str, str], docs: list[Manifest]) -> bool:
    labels = only(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_services_pdb_and_podmonitor_select_the_workers(example: list[Manifest]) -> None:
    services = [d for d in example if d["kind"] == "Service"]
    assert len(services) == 2  # headless + metrics
    for service in services:
        assert selects_pods(service["spec"]["selector"], example), service["metadata"]["name"]
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    pdb = only(example, "PodDisruptionBudget")
    assert selects_pods(pdb["spec"]["selector"]["matchLabels"], example)
    assert pdb["spec"]["maxUnavailable"] == 1
    monitor = only(example, "PodMonitor")
    assert selects_pods(monitor["spec"]["selector"]["matchLabels"], example)
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["http"]
    # job="kinesis-destination", as the alert rules and dashboards expect.
    labels = only(example, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert labels[monitor["spec"]["jobLabel"]] == NAME


def test_keda_scales_on_the_workers_lag_within_the_partitions(
    example: list[Manifest], tmp_path: Path
) -> None:
    settings = configured(example, tmp_path)
    scaled = only(example, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": only(example, "StatefulSet")["metadata"]["name"],
    }
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= EXAMPLE_PARTITIONS
    assert only(example, "StatefulSet")["spec"]["replicas"] <= EXAMPLE_PARTITIONS
    topics = set()
    for trigger in scaled["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["allowIdleConsumers"] == "false"
        assert meta["consumerGroup"] == settings.app_id
        assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
        assert all(isinstance(value, str) for value in meta.values()), "KEDA wants strings"
        topics.add(meta["topic"])
    assert topics == {settings.kafka.qualifications_topic, settings.kafka.profiles_topic}


# -- network policy ------------------------------------------------------------------

KAFKA_PORTS = {9092, 9094, 9096, 9098}  # MSK's listeners; overlays replace them
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
# What docs/operations.md tells an overlay to add when its brokers use other ports.
KAFKA_PORTS_PATCH = """\
- op: replace
  path: /spec/egress/0/ports
  value:
    - protocol: TCP
      port: 9093
"""


def rule_ports(rule: dict[str, Any]) -> set[tuple[str, int | str]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports") or []}


def endpoint_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


@pytest.mark.parametrize("overlay", ["base", "example"])
def test_network_policy_admits_only_kafka_aws_dns_and_monitoring(
    overlay: str, rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    docs = rendered[overlay]
    spec = only(docs, "NetworkPolicy")["spec"]
    assert selects_pods(spec["podSelector"]["matchLabels"], docs)
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]

    # In: the web port only, from the monitoring namespace only.
    (ingress,) = spec["ingress"]
    assert ingress["from"] == [{"namespaceSelector": {"matchLabels": MONITORING}}]
    assert rule_ports(ingress) == {("TCP", "http")}
    web = {p["name"]: p["containerPort"] for p in worker_container(docs)["ports"]}["http"]
    assert web == configured(docs, tmp_path).runtime.web_port

    # Out: every rule names its ports (a rule without ports opens them all).
    assert all(rule.get("ports") for rule in spec["egress"])
    kafka, https, dns = spec["egress"]
    assert rule_ports(kafka) == {("TCP", port) for port in KAFKA_PORTS}
    assert rule_ports(https) == {("TCP", 443)}
    assert rule_ports(dns) == {("UDP", 53), ("TCP", 53)}

    # What the configuration connects to is allowed.
    settings = configured(docs, tmp_path)
    allowed = {port for rule in spec["egress"] for _, port in rule_ports(rule)}
    brokers = {int(b.rsplit(":", 1)[1]) for b in settings.kafka.bootstrap_servers.split(",")}
    assert brokers <= KAFKA_PORTS, f"{overlay}: brokers on {brokers}, policy allows {KAFKA_PORTS}"
    for destination in settings.destinations:
        if destination.endpoint_url:
            assert endpoint_port(destination.endpoint_url) in allowed, destination.endpoint_url


def test_network_policy_admits_the_podmonitors_scrapes(example: list[Manifest]) -> None:
    (ingress,) = only(example, "NetworkPolicy")["spec"]["ingress"]
    scraped = {e["port"] for e in only(example, "PodMonitor")["spec"]["podMetricsEndpoints"]}
    assert scraped <= {port for _, port in rule_ports(ingress)}


def test_an_overlay_can_set_the_kafka_ports(
    kustomize: Path, rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(OVERLAYS["base"], overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [base],
                "patches": [
                    {
                        "target": {"kind": "NetworkPolicy", "name": NAME},
                        "patch": KAFKA_PORTS_PATCH,
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    result = run([kustomize, "build", overlay])
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kafka, *others = only(docs, "NetworkPolicy")["spec"]["egress"]
    assert rule_ports(kafka) == {("TCP", 9093)}
    assert others == only(rendered["base"], "NetworkPolicy")["spec"]["egress"][1:]
