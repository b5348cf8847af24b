"""Issue 18, F7: a deleted curriculum leaves no series in /metrics (REST and gRPC deletes),
and the API description is public with authentication on, by design, unless turned off
(`PACELINE_API_DOCS=false`)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient

from api_support import make_client
from paceline_server.api.app import create_app
from paceline_server.grpc.server import create_server
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings
from support import SPEC

WRITER = {"Authorization": "Bearer w"}


def series_of(text: str, curriculum: str) -> list[str]:
    return [line for line in text.splitlines()
            if not line.startswith("#") and f'curriculum="{curriculum}"' in line]


def cycle(client: TestClient, name: str) -> None:
    spec = {**SPEC, "name": name}
    assert client.post("/v1/curricula", json=spec).status_code == 201
    assert client.post(f"/v1/curricula/{name}/runs", json={"run_id": "r"}).status_code == 201
    batch = client.post(f"/v1/curricula/{name}/batches", json={"run_id": "r", "step": 0})
    indices = batch.json()["indices"]
    report = client.post(f"/v1/curricula/{name}/reports", json={
        "run_id": "r", "step": 0, "indices": indices,
        "rewards": [[[1.0, 5.0]] for _ in indices]})
    assert report.status_code == 200, report.text


def test_create_delete_cycles_leave_no_stale_series(tmp_path: Path) -> None:
    with make_client(f"sqlite:///{tmp_path / 'm.db'}") as client:
        for i in range(20):
            name = f"c{i}"
            cycle(client, name)
            assert series_of(client.get("/metrics").text, name)  # counters and gauges
            deleted = client.delete(f"/v1/curricula/{name}", params={"confirm": name})
            assert deleted.status_code == 204
            assert series_of(client.get("/metrics").text, name) == []
        cycle(client, "kept")
        text = client.get("/metrics").text
        assert series_of(text, "kept")
        assert not any(series_of(text, f"c{i}") for i in range(20))
        assert 'paceline_reports_total{curriculum="kept"} 1.0' in text  # counts from zero


def test_a_recreated_curriculum_counts_in_new_series(tmp_path: Path) -> None:
    """The series the metrics keep at hand are dropped with the curriculum: the same name
    created again counts from zero, in series /metrics shows."""
    with make_client(f"sqlite:///{tmp_path / 'r.db'}") as client:
        cycle(client, "again")
        assert 'paceline_reports_total{curriculum="again"} 1.0' in client.get("/metrics").text
        assert client.delete("/v1/curricula/again", params={"confirm": "again"}
                             ).status_code == 204
        cycle(client, "again")
        text = client.get("/metrics").text
        assert 'paceline_reports_total{curriculum="again"} 1.0' in text
        assert 'paceline_batches_total{curriculum="again"} 1.0' in text
        assert 'paceline_rollouts_total{curriculum="again",kind="generated"}' in text


def test_a_grpc_delete_removes_the_series_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    config = Settings(database_url=url, auto_migrate=True)
    app = create_app(config)
    server = create_server(app.state.service, config, port=0, host="127.0.0.1",
                           metrics=app.state.metrics)
    server.start()
    try:
        with TestClient(app) as client, \
                grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            cycle(client, "g")
            assert series_of(client.get("/metrics").text, "g")
            delete = channel.unary_unary(
                "/paceline.v1.Paceline/DeleteCurriculum",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.DeleteCurriculumResponse.FromString)
            delete(pb.DeleteCurriculumRequest(name="g", confirm="g"), timeout=10)
            assert series_of(client.get("/metrics").text, "g") == []
    finally:
        server.stop(0)


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_the_api_description_is_public_with_auth_on(tmp_path: Path, path: str) -> None:
    with make_client(f"sqlite:///{tmp_path / 'a.db'}", api_tokens={"w": "write"}) as client:
        assert client.get("/v1/curricula").status_code == 401  # the data is not
        assert client.get(path).status_code == 200
        if path == "/openapi.json":
            assert "curricula" in json.dumps(client.get(path).json()["paths"])


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_the_api_description_can_be_turned_off(tmp_path: Path, path: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACELINE_API_DOCS", "false")
    with make_client(f"sqlite:///{tmp_path / 'a.db'}", api_tokens={"w": "write"}) as client:
        assert client.get(path, headers=WRITER).status_code == 404
        assert client.get("/v1/curricula", headers=WRITER).status_code == 200
