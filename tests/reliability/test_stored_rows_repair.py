"""Rows older versions stored before validation existed (issue 18: "a stored row that can
no longer be rendered must never exist"), on SQLite and PostgreSQL.

The rows are written with raw SQL, as those versions did: run metadata with a lone
surrogate, NaN, infinities, text that is no JSON object; a spec with an infinite
parameter; control characters in a curriculum name, a run id and an idempotency key (NUL
too on SQLite; PostgreSQL text cannot hold it); a report past today's limits. Before any
repair, every route that shows them answers without a 5xx (reads render them
sanitised); `paceline-server repair --dry-run` lists and changes nothing; `repair` fixes
what it can, says what it cannot, and a repaired curriculum exports and imports into a
fresh database.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from paceline_server.api.app import create_app
from paceline_server.app.codec import encode_report
from paceline_server.cli import REPAIR_LEFT, main
from paceline_server.domain.report import Report
from paceline_server.domain.stored_json import ORIGINAL_KEY, readable_document
from paceline_server.settings import Settings

SPEC = {"name": "c", "objectives": ["acc"], "sampler": {"kind": "dump_ucb"},
        "layout": {"distributions": [{"name": "a", "size": 10}, {"name": "b", "size": 5}]},
        "batch_size": 2}
METADATA = {  # run id -> metadata text as an old version stored it
    "surrogate": '{"a":"\\ud800","ok":1}',
    "nan": '{"a":NaN}',
    "infinite": '{"a":Infinity,"b":[-Infinity,1]}',
    "text": "not json",
    "list": "[1,2]",
    "fine": '{"lr":0.1}',
}
WHEN = datetime(2026, 1, 1, tzinfo=UTC)
#: A report an older version accepted: advantages far past today's limit (1e6).
PAST = encode_report(Report(run_id="r", step=0, indices=np.array([0, 1]),
                            group_of=np.array([0, 0, 1, 1]), rewards=np.ones((4, 1)),
                            advantages=np.array([1e308, -1e308, 1e308, -1e308])))


def client(url: str) -> TestClient:
    app = create_app(Settings(database_url=url, auto_migrate=True))
    return TestClient(app, raise_server_exceptions=False)


def raw_engine(url: str) -> Engine:
    return create_engine(url)


def cli(url: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(["--database-url", url, "repair", *args], out=out)
    return status, out.getvalue()


def seed(url: str, backend: str) -> dict[str, Any]:
    """A healthy curriculum `c` (one report) through the API, then the old rows."""
    with client(url) as api:
        assert api.post("/v1/curricula", json=SPEC).status_code == 201
        assert api.post("/v1/curricula/c/runs", json={"run_id": "r"}).status_code == 201
        batch = api.post("/v1/curricula/c/batches", json={"run_id": "r", "step": 0}).json()
        assert api.post("/v1/curricula/c/reports", headers={"Idempotency-Key": "k"}, json={
            "run_id": "r", "step": 0, "indices": batch["indices"],
            "rewards": [[1.0, 0.0]] * len(batch["indices"])}).status_code == 200
        assert api.post("/v1/curricula", json={**SPEC, "name": "odd"}).status_code == 201
    bad = "\x00" if backend == "sqlite" else "\x07"
    engine = raw_engine(url)
    try:
        with engine.begin() as conn:
            ids = dict(conn.execute(text("SELECT name, id FROM curricula")).all())
            spec_text = conn.execute(text("SELECT spec FROM curricula WHERE name = 'c'")
                                     ).scalar_one()
            for run_id, metadata in METADATA.items():
                conn.execute(text("INSERT INTO runs VALUES (:cid, :run, :meta, :t, :t)"),
                             {"cid": ids["c"], "run": run_id, "meta": metadata, "t": WHEN})
            conn.execute(text("UPDATE events SET idempotency_key = :key"),
                         {"key": f"k{bad}ey"})
            # In `odd`: a run id and a name no REST path can carry, a spec past the limits.
            conn.execute(text("INSERT INTO runs VALUES (:cid, :run, '{}', :t, :t)"),
                         {"cid": ids["odd"], "run": f"r{bad}1", "t": WHEN})
            infinite = spec_text.replace('"name":"c"', f'"name":{json.dumps(f"n{bad}me")}', 1)
            sampler = json.loads(spec_text)["sampler"]
            assert "c" in sampler["params"]
            infinite = infinite.replace(f'"c":{json.dumps(sampler["params"]["c"])}',
                                        '"c":Infinity', 1)
            assert "Infinity" in infinite
            # In `odd`'s log, a report past today's limits (F3): accepted then, refused now.
            conn.execute(text("INSERT INTO events (curriculum_id, seq, kind, run_id, step, "
                              "idempotency_key, payload, created_at) VALUES (:cid, 1, 'report',"
                              " 'r', 0, NULL, :payload, :t)"),
                         {"cid": ids["odd"], "payload": PAST, "t": WHEN})
            conn.execute(text("UPDATE curricula SET head_seq = 1 WHERE name = 'odd'"))
            conn.execute(text("INSERT INTO curricula (name, spec, created_at, head_seq) "
                              "VALUES (:name, :spec, :t, 0)"),
                         {"name": f"n{bad}me", "spec": infinite, "t": WHEN})
    finally:
        engine.dispose()
    return {"bad": bad}


def stored(url: str, query: str) -> list[Any]:
    engine = raw_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(query)).all())
    finally:
        engine.dispose()


ROUTES = ("/v1/curricula", "/v1/curricula/c", "/v1/curricula/c/runs",
          "/v1/curricula/c/runs/surrogate", "/v1/curricula/c/runs/nan",
          "/v1/curricula/c/state", "/v1/curricula/c/history", "/v1/curricula/c/export",
          "/v1/curricula/odd/runs", "/v1/curricula/odd/export", "/v1/curricula/odd/state")


def check_routes(url: str) -> dict[str, Any]:
    """Every route that shows the rows answers without a 5xx; returns the run listing."""
    with client(url) as api:
        for route in ROUTES:
            response = api.get(route)
            assert response.status_code < 500, (route, response.text)
        for run_id in METADATA:
            beat = api.post(f"/v1/curricula/c/runs/{run_id}/heartbeat")
            assert beat.status_code == 200, (run_id, beat.text)
        runs = api.get("/v1/curricula/c/runs").json()["runs"]
        batch = api.post("/v1/curricula/c/batches", json={"run_id": "r", "step": 1})
        assert batch.status_code == 200
    return {run["run_id"]: run["metadata"] for run in runs}


def test_old_rows_render_before_repair_and_are_repaired(database_url: str) -> None:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    bad = seed(database_url, backend)["bad"]

    listed = check_routes(database_url)  # before any repair: rendered sanitised
    assert listed["surrogate"] == {"a": "\ufffd", "ok": 1,
                                   ORIGINAL_KEY: METADATA["surrogate"]}
    assert listed["nan"] == {"a": "NaN", ORIGINAL_KEY: '{"a":NaN}'}
    assert listed["infinite"]["b"] == ["-Infinity", 1]
    assert listed["text"] == {ORIGINAL_KEY: "not json"}
    assert listed["list"] == {ORIGINAL_KEY: "[1,2]"}
    assert listed["fine"] == {"lr": 0.1}

    before = stored(database_url, "SELECT run_id, metadata FROM runs ORDER BY run_id")
    status, out = cli(database_url, "--dry-run")
    assert status == REPAIR_LEFT
    lines = out.splitlines()
    assert sum(line.startswith("would repair  run metadata") for line in lines) == 5
    assert any(line.startswith("would repair  idempotency key") for line in lines)
    assert any(line.startswith("would repair  curriculum name") for line in lines)
    assert any(line.startswith("cannot repair  run id") for line in lines)
    assert any(line.startswith("cannot repair  report 1 of 'odd'") and "1e+06" in line
               for line in lines), out
    assert any(line.startswith("cannot repair  spec") and "finite" in line
               for line in lines), out
    assert lines[-1].startswith("dry run:") and "nothing was changed" in lines[-1]
    assert stored(database_url, "SELECT run_id, metadata FROM runs ORDER BY run_id") \
        == before

    status, out = cli(database_url)
    assert status == REPAIR_LEFT  # the odd run id and report, the infinite spec are left
    assert out.splitlines()[-1] == "8 repaired, 3 cannot be repaired", out
    for run_id, metadata in stored(database_url, "SELECT run_id, metadata FROM runs"):
        document, sanitised = readable_document(metadata)
        assert not sanitised, (run_id, metadata)  # the stored text now renders as is
        if run_id in METADATA and run_id != "fine":
            assert document[ORIGINAL_KEY] == METADATA[run_id]
    keys = [key for (key,) in stored(database_url, "SELECT idempotency_key FROM events "
                                     "WHERE idempotency_key IS NOT NULL")]
    assert keys == [f"k\\x{ord(bad):02x}ey"]
    names = sorted(name for (name,) in stored(database_url, "SELECT name FROM curricula"))
    assert names == ["c", "n_me-repaired", "odd"]
    assert check_routes(database_url) == listed  # the same answers as before
    with client(database_url) as api:
        renamed = api.get("/v1/curricula/n_me-repaired")
        assert renamed.status_code == 200
        assert renamed.json()["spec"]["name"] == "n_me-repaired"
        assert renamed.json()["spec"]["sampler"]["params"]["c"] == "Infinity"
        refused = api.get("/v1/curricula/n_me-repaired/state")
        assert 400 <= refused.status_code < 500

    status, out = cli(database_url)  # idempotent: only what needs a decision is left
    assert status == REPAIR_LEFT
    assert out.splitlines()[-1] == "0 repaired, 3 cannot be repaired"


def test_a_repaired_curriculum_moves_to_a_fresh_database(database_url: str,
                                                         tmp_path: Path) -> None:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    seed(database_url, backend)
    assert cli(database_url)[0] == REPAIR_LEFT
    with client(database_url) as api:
        export = api.get("/v1/curricula/c/export")
        assert export.status_code == 200
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    with client(fresh) as api:
        imported = api.post("/v1/imports", content=export.content,
                            headers={"Content-Type": "application/x-ndjson"})
        assert imported.status_code == 201, imported.text
        runs = {r["run_id"]: r["metadata"]
                for r in api.get("/v1/curricula/c/runs").json()["runs"]}
    assert runs["nan"] == {"a": "NaN", ORIGINAL_KEY: '{"a":NaN}'}
    assert cli(fresh) == (0, "nothing to repair: every stored row renders\n")


def test_repair_needs_an_existing_database(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = cli(f"sqlite:///{tmp_path / 'none.db'}")
    assert status == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_a_key_is_not_escaped_onto_a_key_that_pruning_kept(database_url: str) -> None:
    """The escaped form of an old key with a control character was checked against the
    log only: when a pruned report held it (what pruning keeps of each report, for the
    duplicate checks), repair gave two reports one key, so a retry of either was
    answered with the other's seq, and pruning the repaired one failed (its key
    unique among pruned reports) after every report that was due a prune."""
    from paceline_server.app.service import PacelineService
    from paceline_server.store import open_store
    from support import SPEC as MATH

    service = PacelineService(open_store(database_url, auto_migrate=True),
                              Settings(database_url=database_url, snapshot_every=2,
                                       prune_events=True))
    service.create_curriculum(MATH)
    service.attach_run("math", run_id="r")
    for step, key in enumerate(["k\\x01", "k-2", "k-3"]):
        indices = service.next_batch("math", "r", step).indices
        service.report("math", {"run_id": "r", "step": step, "indices": indices.tolist(),
                                "rewards": np.zeros((indices.size, 2, 2)).tolist()}, key)
    service.close()
    service.store.close()
    # Report 1 (key "k\x01" as text: backslash, x, 0, 1) is pruned; report 3's key is
    # made an old row's, with the control character itself.
    assert stored(database_url, "SELECT seq FROM pruned_events ORDER BY seq") == [(1,), (2,)]
    with raw_engine(database_url).begin() as conn:
        conn.execute(text("UPDATE events SET idempotency_key = :key WHERE seq = 3"),
                     {"key": "k\x01"})
    status, out = cli(database_url)
    assert status == REPAIR_LEFT
    assert "cannot repair  idempotency key of report 3 of 'math'" in out, out
    assert stored(database_url, "SELECT idempotency_key FROM events WHERE seq = 3") == [
        ("k\x01",)]
