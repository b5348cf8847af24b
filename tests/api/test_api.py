"""REST API behaviour, end to end through the ASGI app on real databases."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient

from api_support import make_client
from support import SPEC

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


def setup(client: TestClient, spec: dict[str, Any] | None = None) -> str:
    assert client.post("/v1/curricula", json=spec or SPEC).status_code == 201
    response = client.post("/v1/curricula/math/runs", json={"run_id": "run-1"})
    assert response.status_code == 201
    return str(response.json()["run_id"])


def dense_report(indices: list[int], step: int = 0, seed: int = 0, **extra: Any
                 ) -> dict[str, Any]:
    """A report of made-up indices: it opts out of the served-batch check (see
    test_exact_resume.py for reports of served batches)."""
    extra.setdefault("unserved", "accept")
    rng = np.random.default_rng(seed)
    rewards = np.stack([rng.integers(0, 2, (len(indices), 4)),
                        rng.integers(0, 100, (len(indices), 4))], axis=-1)
    return {"run_id": "run-1", "step": step, "indices": indices,
            "rewards": rewards.astype(float).tolist(), **extra}


def error_code(response: Any) -> str:
    return str(response.json()["error"]["code"])


class TestCurricula:
    def test_create_get_list(self, client: TestClient) -> None:
        created = client.post("/v1/curricula", json=SPEC)
        assert created.status_code == 201
        body = created.json()
        assert body["seq"] == 0
        assert body["distributions"] == ["easy", "hard"]
        assert body["spec"]["sampler"] == {"kind": "uniform",
                                           "params": {"allocation": "multinomial"}}
        assert client.get("/v1/curricula/math").json()["num_samples"] == 100
        assert [c["name"] for c in client.get("/v1/curricula").json()["curricula"]] == ["math"]

    def test_label_layout_summary(self, client: TestClient) -> None:
        labelled = {**SPEC, "batch_size": 2,
                    "layout": {"labels": [1, 0, 1, 1], "names": ["easy", "hard"]}}
        body = client.post("/v1/curricula", json=labelled).json()
        assert (body["num_samples"], body["distributions"]) == (4, ["easy", "hard"])
        assert body["objectives"] == ["acc", "len"]

    def test_exist_ok(self, client: TestClient) -> None:
        client.post("/v1/curricula", json=SPEC)
        again = client.post("/v1/curricula", json={**SPEC, "exist_ok": True})
        assert again.status_code == 200
        conflict = client.post("/v1/curricula", json={**SPEC, "seed": 2, "exist_ok": True})
        assert conflict.status_code == 409
        assert error_code(conflict) == "CURRICULUM_EXISTS"
        assert client.post("/v1/curricula", json=SPEC).status_code == 409

    @pytest.mark.parametrize(
        ("change", "code"),
        [({"sampler": "nope"}, "UNKNOWN_STRATEGY"),
         ({"sampler": {"kind": "uniform", "x": 1}}, "INVALID_PARAMS"),
         ({"objectives": []}, "INVALID_SPEC"),
         ({"layout": {"distributions": [{"name": "a", "size": 0}]}}, "INVALID_SPEC"),
         ({"weighting": {"kind": "fixed", "weights": [1, 2, 3]}}, "INVALID_PARAMS")],
    )
    def test_bad_specs(self, sqlite_client: TestClient, change: dict[str, Any],
                       code: str) -> None:
        response = sqlite_client.post("/v1/curricula", json={**SPEC, **change})
        assert response.status_code == 422
        assert error_code(response) == code
        assert sqlite_client.get("/v1/curricula").json()["curricula"] == []

    def test_delete_needs_confirmation(self, client: TestClient) -> None:
        setup(client)
        assert client.delete("/v1/curricula/math").status_code == 422
        assert client.delete("/v1/curricula/math?confirm=math").status_code == 204
        missing = client.get("/v1/curricula/math")
        assert missing.status_code == 404
        assert error_code(missing) == "CURRICULUM_NOT_FOUND"


class TestRuns:
    def test_attach_and_heartbeat(self, client: TestClient) -> None:
        client.post("/v1/curricula", json=SPEC)
        run = client.post("/v1/curricula/math/runs", json={"metadata": {"gpu": "h100"}})
        assert run.status_code == 201
        run_id = run.json()["run_id"]
        assert len(run_id) == 32
        beat = client.post(f"/v1/curricula/math/runs/{run_id}/heartbeat")
        assert beat.status_code == 200
        assert beat.json()["stale"] is False
        assert beat.json()["metadata"] == {"gpu": "h100"}
        assert len(client.get("/v1/curricula/math/runs").json()["runs"]) == 1
        assert client.post("/v1/curricula/math/runs/nope/heartbeat").status_code == 404

    def test_reattach_cannot_grow_metadata_past_the_limit(self, client: TestClient) -> None:
        """A re-attach merges its metadata over the stored one: the merged document is
        held to the same 64 KiB limit, else each re-attach could add another 64 KiB to
        the run (and to every listing of the curriculum's runs)."""
        client.post("/v1/curricula", json=SPEC)
        runs = "/v1/curricula/math/runs"
        first = {"a": "x" * 40_000}
        assert client.post(runs, json={"run_id": "r", "metadata": first}).status_code == 201
        again = client.post(runs, json={"run_id": "r", "metadata": {"b": "y" * 40_000}})
        assert again.status_code == 422
        assert error_code(again) == "INVALID_REQUEST"
        assert again.json()["error"]["details"]["field"] == "metadata"
        assert client.get(f"{runs}/r").json()["metadata"] == first  # left untouched
        replaced = {"a": "z" * 40_000, "c": 1}  # overwriting a key stays within it
        assert client.post(runs, json={"run_id": "r", "metadata": replaced}).status_code == 201
        assert client.get(f"{runs}/r").json()["metadata"] == replaced

    def test_runs_are_listed_a_page_at_a_time(self, client: TestClient) -> None:
        """GET .../runs is paged as GET /v1/curricula is: 100 runs unless `limit` (1 to
        1000) says otherwise, from `offset`, oldest first. (It answered every run of the
        curriculum at once, however many.)"""
        client.post("/v1/curricula", json=SPEC)
        store = client.app.state.service.store  # type: ignore[attr-defined]
        for i in range(103):  # quicker than 103 requests; the route only reads them
            store.add_run("math", f"r{i:03d}", {"i": i}, T0 + timedelta(seconds=i))
        runs = "/v1/curricula/math/runs"
        first = client.get(runs)
        assert first.status_code == 200
        assert [r["run_id"] for r in first.json()["runs"]] == [f"r{i:03d}" for i in range(100)]
        page = client.get(runs, params={"limit": 2, "offset": 100}).json()
        assert list(page) == ["runs", "next_page_token"]  # a page token was added
        assert [(r["run_id"], r["metadata"]) for r in page["runs"]] == [
            ("r100", {"i": 100}), ("r101", {"i": 101})]
        rest = client.get(runs, params={"limit": 1000, "offset": 101}).json()["runs"]
        assert [r["run_id"] for r in rest] == ["r101", "r102"]
        assert client.get(runs, params={"offset": 103}).json() == {"runs": [],
                                                                   "next_page_token": None}
        assert len(client.get(runs, params={"limit": 1000}).json()["runs"]) == 103

    @pytest.mark.parametrize("params", [
        {"limit": 0}, {"limit": 1001}, {"limit": -1}, {"limit": "ten"}, {"limit": 1.5},
        {"offset": -1}, {"offset": 2**53}, {"offset": "x"}])
    def test_bad_run_pages_are_refused(self, sqlite_client: TestClient,
                                       params: dict[str, Any]) -> None:
        client = sqlite_client
        setup(client)
        answer = client.get("/v1/curricula/math/runs", params=params)
        assert answer.status_code == 422, answer.text
        assert error_code(answer) == "INVALID_REQUEST"
        assert next(iter(params)) in answer.json()["error"]["message"]
        assert [r["run_id"] for r in client.get("/v1/curricula/math/runs").json()["runs"]] \
            == ["run-1"]

    def test_runs_go_stale(self, tmp_path: Any) -> None:
        with make_client(f"sqlite:///{tmp_path / 's.db'}", run_stale_after_s=1e-6) as c:
            setup(c)
            assert c.get("/v1/curricula/math/runs/run-1").json()["stale"] is True


class TestReportsAndBatches:
    def test_cycle(self, client: TestClient) -> None:
        setup(client)
        batch = client.post("/v1/curricula/math/batches", json={"run_id": "run-1", "step": 0})
        assert batch.status_code == 200
        body = batch.json()
        assert len(body["indices"]) == 8
        assert body["reward_weights"] == {"acc": 0.75, "len": 0.25}
        assert body["probabilities"] == {"easy": 0.6, "hard": 0.4}
        assert body["seq"] == 0
        ack = client.post("/v1/curricula/math/reports", json=dense_report(body["indices"]))
        assert ack.status_code == 200
        assert ack.json() == {"seq": 1, "replayed": False}
        state = client.get("/v1/curricula/math/state").json()
        assert state["seq"] == 1
        assert sum(d["sampled"] for d in state["distributions"]) == 8
        assert state["weight_history"][0]["weights"] == {"acc": 0.75, "len": 0.25}

    def test_report_can_carry_the_next_batch(self, client: TestClient) -> None:
        setup(client)
        first = client.post("/v1/curricula/math/batches",
                            json={"run_id": "run-1", "step": 0}).json()
        ack = client.post("/v1/curricula/math/reports?next_step=1",
                          json=dense_report(first["indices"]),
                          headers={"Idempotency-Key": "run-1/0"})
        assert ack.status_code == 200
        body = ack.json()
        assert (body["seq"], body["replayed"]) == (1, False)
        batch = body["batch"]
        assert (batch["run_id"], batch["step"], batch["seq"]) == ("run-1", 1, 1)
        assert len(batch["indices"]) == 8
        # It is the stored batch of (run-1, 1): asking for it again returns it.
        assert client.post("/v1/curricula/math/batches",
                           json={"run_id": "run-1", "step": 1}).json() == batch
        # A retry is applied once and answered with the same batch.
        again = client.post("/v1/curricula/math/reports?next_step=1",
                            json=dense_report(first["indices"]),
                            headers={"Idempotency-Key": "run-1/0"})
        assert again.json() == {**body, "replayed": True}
        sized = client.post("/v1/curricula/math/reports?next_step=2&next_size=3",
                            json=dense_report(batch["indices"], step=1))
        assert (sized.json()["seq"], len(sized.json()["batch"]["indices"])) == (2, 3)
        assert client.get("/v1/curricula/math/state").json()["seq"] == 2

    def test_report_batch_equals_the_separate_call(self, tmp_path: Any) -> None:
        """One call per step gives the same batches as report-then-ask, step by step."""
        def trace(combined: bool, db: str) -> list[list[int]]:
            with make_client(f"sqlite:///{tmp_path / db}") as c:
                setup(c)
                indices = c.post("/v1/curricula/math/batches",
                                 json={"run_id": "run-1", "step": 0}).json()["indices"]
                seen = []
                for step in range(5):
                    report = dense_report(indices, step=step, seed=step)
                    if combined:
                        indices = c.post(f"/v1/curricula/math/reports?next_step={step + 1}",
                                         json=report).json()["batch"]["indices"]
                    else:
                        c.post("/v1/curricula/math/reports", json=report)
                        indices = c.post("/v1/curricula/math/batches", json={
                            "run_id": "run-1", "step": step + 1}).json()["indices"]
                    seen.append(indices)
                return seen

        assert trace(True, "one.db") == trace(False, "two.db")

    @pytest.mark.parametrize(("query", "status", "code"), [
        ("next_step=-1", 422, "INVALID_REQUEST"),
        ("next_step=x", 422, "INVALID_REQUEST"),
        ("next_size=4", 422, "INVALID_REQUEST"),
        ("next_step=1&next_size=0", 422, "INVALID_REQUEST"),
        ("next_step=1&next_size=101", 422, "INVALID_REQUEST"),
        ("next_step=1.5", 422, "INVALID_REQUEST"),
        ("next_step=", 422, "INVALID_REQUEST"),
        ("next_step=99999999999999999999999", 422, "INVALID_REQUEST"),
    ])
    def test_bad_next_batch_leaves_state_untouched(self, client: TestClient, query: str,
                                                   status: int, code: str) -> None:
        setup(client)
        response = client.post(f"/v1/curricula/math/reports?{query}",
                               json=dense_report([1, 2, 3]))
        assert response.status_code == status, response.json()
        assert error_code(response) == code
        assert client.get("/v1/curricula/math/state").json()["seq"] == 0

    def test_next_batch_served_with_another_size_refuses_the_report(
            self, client: TestClient) -> None:
        setup(client)
        client.post("/v1/curricula/math/batches", json={"run_id": "run-1", "step": 1,
                                                        "size": 4})
        response = client.post("/v1/curricula/math/reports?next_step=1&next_size=8",
                               json=dense_report([1, 2, 3]))
        assert response.status_code == 409
        assert error_code(response) == "IDEMPOTENCY_CONFLICT"
        assert client.get("/v1/curricula/math/state").json()["seq"] == 0
        served = client.post("/v1/curricula/math/reports?next_step=1",
                             json=dense_report([1, 2, 3]))
        assert len(served.json()["batch"]["indices"]) == 4  # the stored one

    def test_same_run_and_step_give_the_same_batch(self, client: TestClient) -> None:
        setup(client)
        first = client.post("/v1/curricula/math/batches", json={"run_id": "run-1", "step": 3})
        client.post("/v1/curricula/math/reports", json=dense_report([1, 2, 3]))
        again = client.post("/v1/curricula/math/batches", json={"run_id": "run-1", "step": 3})
        assert again.json() == first.json()
        other = client.post("/v1/curricula/math/batches",
                            json={"run_id": "run-1", "step": 3, "size": 4})
        assert other.status_code == 409

    def test_idempotent_retry_is_applied_once(self, client: TestClient) -> None:
        setup(client)
        report = dense_report([1, 2])
        headers = {"Idempotency-Key": "run-1/0"}
        first = client.post("/v1/curricula/math/reports", json=report, headers=headers)
        retry = client.post("/v1/curricula/math/reports", json=report, headers=headers)
        assert first.json() == {"seq": 1, "replayed": False}
        assert retry.json() == {"seq": 1, "replayed": True}
        assert client.get("/v1/curricula/math").json()["seq"] == 1
        different = client.post("/v1/curricula/math/reports", json=dense_report([3]),
                                headers=headers)
        assert different.status_code == 409
        assert error_code(different) == "IDEMPOTENCY_CONFLICT"
        other_step = dense_report([1, 2], step=1)
        in_body = client.post("/v1/curricula/math/reports",
                              json={**other_step, "idempotency_key": "k2"})
        assert in_body.json()["seq"] == 2
        assert client.post("/v1/curricula/math/reports",
                           json={**other_step, "idempotency_key": "k2"}).json()["replayed"]

    def test_flat_form_and_named_eval_objectives(self, client: TestClient) -> None:
        setup(client)
        report = {"run_id": "run-1", "step": 0, "rollout_indices": [5, 5, 9],
                  "rewards": [[1, 10], [0, 20], [1, 5]],
                  "eval_objectives": {"len": 12.0, "acc": 0.5}, "unserved": "accept"}
        assert client.post("/v1/curricula/math/reports", json=report).json()["seq"] == 1
        state = client.get("/v1/curricula/math/state").json()
        assert state["distributions"][0]["rollouts"] == 3

    def test_gzip_and_msgpack_bodies(self, client: TestClient) -> None:
        setup(client)
        report = dense_report([1, 2, 3])
        zipped = gzip.compress(json.dumps(report).encode())
        response = client.post("/v1/curricula/math/reports", content=zipped,
                               headers={"Content-Encoding": "gzip",
                                        "Content-Type": "application/json"})
        assert response.json()["seq"] == 1
        packed = msgpack.packb(dense_report([4], step=1))
        response = client.post("/v1/curricula/math/reports", content=packed,
                               headers={"Content-Type": "application/msgpack"})
        assert response.json()["seq"] == 2


class TestBadInputLeavesStateUntouched:
    @pytest.mark.parametrize(
        ("mutate", "status", "code"),
        [(lambda r: r.update(rewards=[[[float("nan"), 1.0]] * 4]), 422, "INVALID_REPORT"),
         (lambda r: r.update(indices=[500]), 422, "INDEX_OUT_OF_RANGE"),
         (lambda r: r.update(rewards=[[[1.0]] * 4]), 422, "INVALID_REPORT"),
         (lambda r: r.update(run_id="ghost"), 404, "RUN_NOT_FOUND"),
         (lambda r: r.update(colour="red"), 422, "INVALID_REPORT"),
         (lambda r: r.pop("step"), 422, "INVALID_REPORT")],
    )
    def test_rejected_reports(self, client: TestClient, mutate: Any, status: int,
                              code: str) -> None:
        setup(client)
        client.post("/v1/curricula/math/reports", json=dense_report([1]))
        before = client.get("/v1/curricula/math/state").json()
        report = dense_report([2])
        mutate(report)
        body = json.dumps(report).replace("NaN", "NaN")
        response = client.post("/v1/curricula/math/reports", content=body,
                               headers={"Content-Type": "application/json"})
        assert response.status_code == status, response.text
        assert error_code(response) == code
        assert client.get("/v1/curricula/math/state").json() == before

    def test_malformed_bodies(self, sqlite_client: TestClient) -> None:
        setup(sqlite_client)
        url = "/v1/curricula/math/reports"
        bad_json = sqlite_client.post(url, content=b"{", headers={"Content-Type":
                                                                  "application/json"})
        assert (bad_json.status_code, error_code(bad_json)) == (400, "MALFORMED_BODY")
        xml = sqlite_client.post(url, content=b"<r/>", headers={"Content-Type": "text/xml"})
        assert (xml.status_code, error_code(xml)) == (415, "UNSUPPORTED_MEDIA_TYPE")
        bad_gzip = sqlite_client.post(url, content=b"nope", headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert bad_gzip.status_code == 400

    def test_oversize_bodies(self, tmp_path: Any) -> None:
        with make_client(f"sqlite:///{tmp_path / 'o.db'}", max_body_bytes=2048) as c:
            setup(c)
            big = dense_report(list(range(60)))
            response = c.post("/v1/curricula/math/reports", json=big)
            assert (response.status_code, error_code(response)) == (413, "PAYLOAD_TOO_LARGE")
            bomb = gzip.compress(b"[" + b"0," * 100_000 + b"0]")
            response = c.post("/v1/curricula/math/reports", content=bomb, headers={
                "Content-Type": "application/json", "Content-Encoding": "gzip"})
            assert response.status_code == 413
            assert c.get("/v1/curricula/math").json()["seq"] == 0

    def test_bad_batch_requests(self, sqlite_client: TestClient) -> None:
        setup(sqlite_client)
        url = "/v1/curricula/math/batches"
        negative = sqlite_client.post(url, json={"run_id": "run-1", "step": -1})
        assert (negative.status_code, error_code(negative)) == (422, "INVALID_REQUEST")
        too_big = sqlite_client.post(url, json={"run_id": "run-1", "step": 0, "size": 101})
        assert (too_big.status_code, error_code(too_big)) == (422, "INVALID_REQUEST")
        ghost = sqlite_client.post(url, json={"run_id": "ghost", "step": 0})
        assert ghost.status_code == 404
        missing = sqlite_client.post("/v1/curricula/nope/batches",
                                     json={"run_id": "run-1", "step": 0})
        assert error_code(missing) == "CURRICULUM_NOT_FOUND"


class TestResume:
    def test_state_survives_a_new_app_on_the_same_database(self, database_url: str) -> None:
        with make_client(database_url, snapshot_every=2) as first:
            setup(first)
            for step in range(5):
                first.post("/v1/curricula/math/reports", json=dense_report([step], step=step))
            state = first.get("/v1/curricula/math/state").json()
            batch = first.post("/v1/curricula/math/batches",
                               json={"run_id": "run-1", "step": 9}).json()
        with make_client(database_url, snapshot_every=2) as second:
            assert second.get("/v1/curricula/math/state").json() == state
            fresh = second.post("/v1/curricula/math/batches",
                                json={"run_id": "run-1", "step": 10}).json()
            assert fresh["seq"] == batch["seq"] == 5


class TestAuth:
    def test_scopes(self, tmp_path: Any) -> None:
        tokens = {"reader": "read", "writer": "write"}
        with make_client(f"sqlite:///{tmp_path / 'a.db'}", api_tokens=tokens) as c:
            anonymous = c.get("/v1/curricula")
            assert (anonymous.status_code, error_code(anonymous)) == (401, "UNAUTHENTICATED")
            assert anonymous.headers["www-authenticate"] == "Bearer"
            wrong = c.get("/v1/curricula", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            read = {"Authorization": "Bearer reader"}
            assert c.get("/v1/curricula", headers=read).status_code == 200
            denied = c.post("/v1/curricula", json=SPEC, headers=read)
            assert (denied.status_code, error_code(denied)) == (403, "FORBIDDEN")
            write = {"Authorization": "Bearer writer"}
            assert c.post("/v1/curricula", json=SPEC, headers=write).status_code == 201
            assert c.get("/healthz").status_code == 200
            # The report route checks its scope itself (it solves no dependencies).
            c.post("/v1/curricula/math/runs", json={"run_id": "run-1"}, headers=write)
            report = dense_report([1])
            for headers, status in (({}, 401), (read, 403), (write, 200)):
                answer = c.post("/v1/curricula/math/reports", json=report, headers=headers)
                assert answer.status_code == status, answer.json()
            state = c.get("/v1/curricula/math/state", headers=read).json()
            assert state["seq"] == 1  # the refused reports left no trace


class TestOps:
    def test_health_ready_metrics_openapi(self, client: TestClient) -> None:
        setup(client)
        client.post("/v1/curricula/math/reports", json=dense_report([1]))
        client.get("/v1/curricula/math/state")
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        metrics = client.get("/metrics").text
        assert 'paceline_http_requests_total{method="POST",route="/v1/curricula/{name}/reports"' \
            ',status="200",transport="rest"} 1.0' in metrics
        assert 'paceline_distribution_probability{curriculum="math",distribution="easy"} 0.6' \
            in metrics
        assert 'paceline_reward_weight{curriculum="math",objective="acc"} 0.75' in metrics
        assert 'paceline_reports_total{curriculum="math"} 1.0' in metrics
        schema = client.get("/openapi.json").json()
        operation = schema["paths"]["/v1/curricula/{name}/reports"]["post"]
        # Read by the route itself rather than FastAPI, yet documented all the same.
        assert {(p["name"], p["in"]) for p in operation["parameters"]} == {
            ("name", "path"), ("Idempotency-Key", "header"), ("next_step", "query"),
            ("next_size", "query")}
        assert client.get("/docs").status_code == 200
