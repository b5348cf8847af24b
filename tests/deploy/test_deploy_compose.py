"""docker-compose.yml and the files it mounts: services buildable or pullable, health-
checked, started in a valid order, ports and volumes consistent, auth required; and
`docker compose config` where the compose plugin exists."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from deploy_support import (
    COMPOSE_FILE,
    GRAFANA_PROVISIONING,
    PROMETHEUS_CONFIG,
    REPO,
    InterpolationError,
    interpolate,
)

yaml = pytest.importorskip("yaml")

ENV = {"PACELINE_API_TOKENS": '{"compose-write-token": "write"}'}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
#: Services that run once and exit: no healthcheck, and others may wait for their success.
ONE_SHOT = {"migrate"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return dict(interpolate(loaded, ENV))


def port_mappings(service: dict[str, Any]) -> list[tuple[range, int]]:
    """(host ports, container port) of each published port, short or long syntax."""
    mappings = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            host, container = str(port["published"]), int(port["target"])
        else:
            *_, host, container_text = str(port).split(":")
            container = int(container_text.split("/")[0])
        first, _, last = host.partition("-")
        mappings.append((range(int(first), int(last or first) + 1), container))
    return mappings


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping"
    return {key: str(value) for key, value in env.items()}


def test_every_service_has_an_image_or_a_build(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = REPO / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file()


def test_long_running_services_are_health_checked(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check["test"], name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert service.get("restart") == "unless-stopped", name


def test_dependencies_point_to_services_that_can_satisfy_them(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = rule["condition"]
            assert condition in CONDITIONS, (name, condition)
            if condition == "service_healthy":
                assert "healthcheck" in services[target], (name, target)
                assert not services[target]["healthcheck"].get("disable"), (name, target)
            if condition == "service_completed_successfully":
                assert target in ONE_SHOT, (name, target)
    # No cycles: a topological order exists.
    order: list[str] = []
    pending = dict(services)
    while pending:
        ready = [n for n, s in pending.items() if set(s.get("depends_on", {})) <= set(order)]
        assert ready, f"dependency cycle among {sorted(pending)}"
        order.extend(ready)
        for n in ready:
            del pending[n]


def test_the_service_waits_for_its_migration_and_backends(compose: dict[str, Any]) -> None:
    paceline = compose["services"]["paceline"]
    assert paceline["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert paceline["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert paceline["depends_on"]["redis"]["condition"] == "service_healthy"
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["image"] == paceline["image"] and migrate["build"] == paceline["build"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_service_settings_reach_the_backends(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = env_of(services["paceline"])
    database = urlsplit(env["PACELINE_DATABASE_URL"])
    assert database.scheme == "postgresql+psycopg"
    assert database.hostname == "postgres" and database.port == 5432
    postgres = env_of(services["postgres"])
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path == "/" + postgres["POSTGRES_DB"]
    assert env_of(services["migrate"])["PACELINE_DATABASE_URL"] == env[
        "PACELINE_DATABASE_URL"]
    redis = urlsplit(env["PACELINE_REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
    assert env["PACELINE_HOST"] == "0.0.0.0"  # reachable from the other containers
    assert env["PACELINE_WORKERS"] == "1"


def test_auth_is_on_and_required(compose: dict[str, Any]) -> None:
    env = env_of(compose["services"]["paceline"])
    assert env["PACELINE_API_TOKENS"] == ENV["PACELINE_API_TOKENS"]
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    with pytest.raises(InterpolationError, match="PACELINE_API_TOKENS"):
        interpolate(raw, {})
    with pytest.raises(InterpolationError, match="PACELINE_API_TOKENS"):
        interpolate(raw, {"PACELINE_API_TOKENS": ""})


def test_replicas_and_ports(compose: dict[str, Any]) -> None:
    paceline = compose["services"]["paceline"]
    replicas = paceline["deploy"]["replicas"]
    assert replicas == 2
    command = paceline["command"]
    http = int(env_of(paceline)["PACELINE_PORT"])
    grpc = int(command[command.index("--grpc-port") + 1])
    mappings = {container: hosts for hosts, container in port_mappings(paceline)}
    assert set(mappings) == {http, grpc}
    for ports in mappings.values():  # one host port per replica
        assert len(ports) >= replicas
    probe = " ".join(paceline["healthcheck"]["test"])
    assert f"127.0.0.1:{http}/readyz" in probe
    # No two services publish the same host port.
    published: list[int] = []
    for service in compose["services"].values():
        for hosts, _ in port_mappings(service):
            published.extend(hosts)
    assert len(published) == len(set(published))


def test_volumes_are_declared_and_mounts_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    used: set[str] = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), (name, volume)
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: {source} is not in the repository"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"


def mount_target(service: dict[str, Any], source: str) -> str:
    for volume in service["volumes"]:
        parts = volume.split(":")
        if Path(parts[0]) == Path(source):
            return str(parts[1])
    raise AssertionError(f"{source} is not mounted")


def test_prometheus_scrapes_every_replica(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    prometheus = compose["services"]["prometheus"]
    assert mount_target(prometheus, "./deploy/prometheus/prometheus.yml") in " ".join(
        prometheus["command"])
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "paceline")
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["paceline"] and sd["type"] == "A"
    assert sd["port"] == int(env_of(compose["services"]["paceline"])["PACELINE_PORT"])


def test_grafana_is_provisioned(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    assert mount_target(grafana, "./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    dashboards_dir = mount_target(grafana, "./deploy/grafana/dashboards")
    (datasource,) = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and "prometheus" in compose["services"]
    assert url.port in {c for _, c in port_mappings(compose["services"]["prometheus"])}
    (provider,) = yaml.safe_load(
        (GRAFANA_PROVISIONING / "dashboards" / "paceline.yml").read_text())["providers"]
    assert provider["options"]["path"] == dashboards_dir
    home = env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(dashboards_dir)
    assert (REPO / "deploy" / "grafana" / "dashboards" / Path(home).name).is_file()


def test_the_compose_specification_accepts_the_file(compose: dict[str, Any]) -> None:
    """A spec-compliant parser (the compose_spec Rust crate) rejects unknown keys and
    malformed values that the checks above do not look at. It does not resolve YAML
    merge keys, so it reads the file as PyYAML loaded it."""
    compose_spec = pytest.importorskip("compose_spec")
    parsed = compose_spec.PyCompose.from_yaml(yaml.safe_dump(compose))
    assert sorted(parsed.service_names()) == sorted(compose["services"])
    broken = {**compose, "services": {**compose["services"], "redis": {
        **compose["services"]["redis"], "helthcheck": {}}}}
    with pytest.raises(ValueError, match="helthcheck"):
        compose_spec.PyCompose.from_yaml(yaml.safe_dump(broken))


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not docker_compose_available(), reason="the docker compose plugin is "
                    "not installed")
def test_docker_compose_config() -> None:
    """Compose's own validation; and without tokens it refuses the file."""
    base = ["docker", "compose", "--file", str(COMPOSE_FILE), "config", "--quiet"]
    without = {k: v for k, v in os.environ.items() if k != "PACELINE_API_TOKENS"}
    ok = subprocess.run(base, capture_output=True, text=True, env={**without, **ENV},
                        check=False)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(base, capture_output=True, text=True, env=without, check=False)
    assert refused.returncode != 0
    assert "PACELINE_API_TOKENS" in refused.stderr
