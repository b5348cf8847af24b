"""The Grafana dashboard: every PromQL expression parses and names only metrics, and
labels of them, that a live service exports (scraped from the real app after a
curriculum is used over REST and gRPC: runs, batches, reports, a retry, refusals), it
shows what operators need, and the Helm chart ships the same file."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from deploy_support import (
    DASHBOARD,
    HELM_DASHBOARD,
    dashboard_exprs,
    label_names,
    metric_names,
    selectors,
)
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from paceline_server.api.app import create_app
from paceline_server.grpc.server import create_server
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings

TOKEN = "dashboard-test-write-token"
SPEC: dict[str, Any] = {
    "name": "dash",
    "layout": {"distributions": [{"name": "easy", "size": 40}, {"name": "hard", "size": 40}]},
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "sampler": "dump_ucb",
    "weighting": "hypervolume",
    "batch_size": 8,
    "seed": 3,
}
#: Metrics the issue asks the dashboard to show, by what they mean.
REQUIRED = {
    "sampling probability": "paceline_distribution_probability",
    "mean |advantage|": "paceline_distribution_mean_abs_advantage",
    "success": "paceline_distribution_success",
    "reward weights": "paceline_reward_weight",
    "hypervolume": "paceline_hypervolume",
    "zero-variance fraction": "paceline_distribution_zero_variance_fraction",
    "health flags": "paceline_distribution_health",
    "request latency": "paceline_http_request_seconds_bucket",
    "requests": "paceline_http_requests_total",
    "errors by code": "paceline_request_errors_total",
}
#: Series every transport (REST, gRPC) writes, told apart by the `transport` label.
REQUEST_SERIES = ("paceline_http_request", "paceline_request_errors")
#: Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"instance", "job"}
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample names (with _total/_bucket/_sum/_count/_created) that a live service serves
    once a curriculum has been used over REST and gRPC (auth on, as deployed), each with
    the label names its samples carry."""
    database = tmp_path_factory.mktemp("metrics") / "paceline.db"
    settings = Settings(database_url=f"sqlite:///{database}", auto_migrate=True,
                        api_tokens={TOKEN: "write"})
    headers = {"Authorization": f"Bearer {TOKEN}"}
    app = create_app(settings)
    server = create_server(app.state.service, settings, port=0, host="127.0.0.1",
                           metrics=app.state.metrics)
    server.start()
    try:
        with TestClient(app, headers=headers) as client, \
                grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            use_over_rest(client)
            use_over_grpc(channel)
            scrape = client.get("/metrics", headers={})
            assert scrape.status_code == 200
    finally:
        server.stop(0)
    found: dict[str, set[str]] = {}
    transports = set()
    for family in text_string_to_metric_families(scrape.text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
            if sample.name == "paceline_http_requests_total":
                transports.add(sample.labels["transport"])
    assert transports == {"rest", "grpc"}  # both were exercised
    return found


@pytest.fixture(scope="module")
def exported(scraped: dict[str, set[str]]) -> set[str]:
    return set(scraped)


def use_over_rest(client: TestClient) -> None:
    assert client.post("/v1/curricula", json=SPEC).status_code == 201
    run = client.post("/v1/curricula/dash/runs", json={"run_id": "r1"})
    assert run.status_code == 201
    batch = client.post("/v1/curricula/dash/batches", json={"run_id": "r1", "step": 0})
    assert batch.status_code == 200, batch.text
    indices = batch.json()["indices"]
    rewards = [[[float((i + j) % 2), float(10 * j)] for j in range(4)] for i in indices]
    body = {"run_id": "r1", "step": 0, "indices": indices, "rewards": rewards,
            "idempotency_key": "r1/0"}
    for replayed in (False, True):  # a retry: counted as one
        report = client.post("/v1/curricula/dash/reports", json=body)
        assert report.status_code == 200, report.text
        assert report.json()["replayed"] is replayed
    assert client.post("/v1/curricula/dash/batches",
                       json={"run_id": "r1", "step": 1}).status_code == 200
    # a refused request: errors are counted by code only once one happened
    assert client.get("/v1/curricula/absent").status_code == 404


def use_over_grpc(channel: grpc.Channel) -> None:
    """A second run trained over gRPC, and a refused call."""
    metadata = (("authorization", f"Bearer {TOKEN}"),)

    def call(method: str, request: Any) -> Any:
        output = getattr(pb, pb.DESCRIPTOR.services_by_name["Paceline"]
                         .methods_by_name[method].output_type.name)
        stub = channel.unary_unary(f"/paceline.v1.Paceline/{method}",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=output.FromString)
        return stub(request, timeout=10, metadata=metadata)

    call("AttachRun", pb.AttachRunRequest(curriculum="dash", run_id="r2"))
    batch = call("NextBatch", pb.NextBatchRequest(curriculum="dash", run_id="r2", step=0))
    n = len(batch.indices)
    call("Report", pb.ReportRequest(
        curriculum="dash", run_id="r2", step=0, indices=batch.indices,
        rewards=pb.Array(shape=[n, 2, 2], f64=[1.0, 3.0, 0.0, 5.0] * n), next_step=1))
    with pytest.raises(grpc.RpcError):
        call("GetCurriculum", pb.GetCurriculumRequest(name="absent"))


def exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    found = list(dashboard_exprs(dashboard))
    assert len(found) > 10
    return iter(found)


def test_every_metric_in_the_dashboard_is_exported(dashboard: dict[str, Any],
                                                   exported: set[str]) -> None:
    pytest.importorskip("promql_parser")
    assert "paceline_hypervolume" in exported  # the scrape is the full set, not a subset
    missing = {}
    for where, expr in exprs(dashboard):
        unknown = metric_names(expr) - exported
        if unknown:
            missing[where] = sorted(unknown)
    assert not missing, f"not exported by the service: {missing}"


def test_every_label_in_the_dashboard_is_exported(dashboard: dict[str, Any],
                                                  scraped: dict[str, set[str]]) -> None:
    """A label a selector matches on must be one its metric carries (a misspelt matcher
    selects nothing, a `!=` one everything); one an aggregation, a vector match or the
    legend names must be carried by a metric of the expression. `instance` and `job`
    are Prometheus' own target labels."""
    pytest.importorskip("promql_parser")
    wrong = {}
    legends = {f"panel {panel['title']!r} target {target['refId']}": target["legendFormat"]
               for panel in dashboard["panels"] for target in panel.get("targets", [])}
    for where, expr in exprs(dashboard):
        selected, grouped = label_names(expr)
        carried = set().union(*(scraped.get(name, set()) for name in selected))
        for name, labels in selected.items():
            unknown = labels - scraped.get(name, set()) - TARGET_LABELS
            if unknown:
                wrong[f"{where}: {name}"] = sorted(unknown)
        grouped |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legends.get(where, "")))
        unknown = grouped - carried - TARGET_LABELS
        if unknown:
            wrong[where] = sorted(unknown)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            label = variable["query"]["query"].rsplit(",", 1)[1].strip(" )")
            selected, _ = label_names(variable["query"]["query"].split("(", 1)[1]
                                      .rsplit(",", 1)[0])
            if not all(label in scraped.get(name, set()) | TARGET_LABELS
                       for name in selected):
                wrong[f"variable {variable['name']}"] = [label]
    assert not wrong, f"labels the service does not export: {wrong}"


def test_every_selector_is_of_the_chosen_job(dashboard: dict[str, Any],
                                            scraped: dict[str, set[str]]) -> None:
    """One Prometheus scraping several Paceline deployments (releases, namespaces) sees
    the same curricula and routes under each one's `job`: without a `job` variable every
    panel mixed them (`max by (curriculum)` over all releases, request rates summed
    across them). The dashboard picks one job, listed from a series every target serves
    once scraped, and every selector, the curriculum list's included, matches it."""
    pytest.importorskip("promql_parser")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    job = variables["job"]
    assert job["type"] == "query" and not job["multi"] and not job["includeAll"]
    query = job["query"]["query"]
    assert query == job["definition"] == "label_values(paceline_http_requests_total, job)"
    assert "paceline_http_requests_total" in scraped  # served from the first scrape on
    names = list(variables)
    assert names.index("job") < names.index("curriculum")  # the list depends on it
    unscoped = {}
    for where, expr in exprs(dashboard):
        if where == "variable job":
            continue
        for name, matchers in selectors(expr):
            if matchers.get("job") != ("=", "$job"):
                unscoped.setdefault(where, []).append(name)
    assert not unscoped, f"selectors not limited to the chosen job: {unscoped}"


def test_selectors_are_read_from_the_syntax_tree() -> None:
    pytest.importorskip("promql_parser")
    assert selectors('sum(rate(a{job="$job",route!~"/x"}[$__rate_interval])) / b') == [
        ("a", {"job": ("=", "$job"), "route": ("!~", "/x")}), ("b", {})]


def test_label_names_are_read_from_the_syntax_tree() -> None:
    pytest.importorskip("promql_parser")
    selected, grouped = label_names(
        'histogram_quantile(0.9, sum by (le, t) (rate(a_bucket{route!~"/x"}[5m])))'
        ' / on (i) group_left () max without (w) (b{curriculum=~"$curriculum"})')
    assert selected == {"a_bucket": {"route"}, "b": {"curriculum"}}
    assert grouped == {"le", "t", "i", "w"}


def test_the_dashboard_shows_what_operators_need(dashboard: dict[str, Any]) -> None:
    pytest.importorskip("promql_parser")
    used = set().union(*(metric_names(expr) for _, expr in exprs(dashboard)))
    absent = {meaning: name for meaning, name in REQUIRED.items() if name not in used}
    assert not absent, f"the dashboard does not show {absent}"


def test_metric_names_are_read_from_the_syntax_tree() -> None:
    """The check above sees selectors inside functions, aggregations and binary
    operations, and refuses what it cannot parse."""
    pytest.importorskip("promql_parser")
    assert metric_names(
        'histogram_quantile(0.9, sum by (le) (rate(a_bucket{route!~"/x"}[$__rate_interval])))'
        ' / on (i) group_left () max by (i) (b{curriculum=~"$curriculum"})') == {"a_bucket", "b"}
    with pytest.raises(ValueError, match="parenthes"):
        metric_names("sum(rate(a[5m])")
    with pytest.raises(ValueError, match="metric name"):
        metric_names('{__name__=~"paceline_.*"}')
    with pytest.raises(ValueError, match="Grafana variable"):
        metric_names("a{x=\"$unknown\"}")


def test_request_panels_show_each_transport(dashboard: dict[str, Any]) -> None:
    """Request, latency and error panels split by transport (rest, grpc): every
    aggregation over a request series keeps the `transport` label, and the legend names
    it."""
    checked = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            if not any(series in expr for series in REQUEST_SERIES):
                continue
            checked += 1
            groupings = _BY.findall(expr)
            assert groupings, f"{panel['title']}: {expr}"
            for grouping in groupings:
                labels = {label.strip() for label in grouping.split(",")}
                assert "transport" in labels, f"{panel['title']}: {expr}"
            assert "{{transport}}" in target["legendFormat"], panel["title"]
    assert checked >= 6  # rate, 3 quantiles, mean, error ratio, errors by code


def test_request_panels_read_the_same_requests_and_show_zero_errors(
        dashboard: dict[str, Any]) -> None:
    """Every request selector leaves out the operational routes (probes and scrapes,
    which gRPC does not count), and a ratio of errors to requests reads 0 rather than
    no data when nothing failed: the 5xx selector matches no series then, and a division
    by a missing series is empty for every transport."""
    selector = re.compile(r"paceline_http_request\w*\{([^}]*)\}")
    ratios = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for labels in selector.findall(expr):
                assert 'route!~"/metrics|/healthz|/readyz"' in labels, (panel["title"], expr)
            if 'status=~"5' in expr:
                ratios += 1
                assert " or 0 * " in expr, f"{panel['title']} is empty without errors"
    assert ratios == 1


def test_panels_use_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["curriculum"]["includeAll"] and variables["curriculum"]["multi"]
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "paceline"


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_helm_chart_ships_the_same_dashboard() -> None:
    assert Path(HELM_DASHBOARD).read_bytes() == Path(DASHBOARD).read_bytes(), (
        "copy deploy/grafana/dashboards/paceline.json to helm/paceline/dashboards/")
