"""REST requests in the shared request metrics: `transport="rest"`, and every error
answer counted by its stable code, whoever rendered it (a route, a middleware, the
router)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api_support import make_client
from support import SPEC


def errors_by_code(client: TestClient) -> dict[tuple[str, str], float]:
    text = client.get("/metrics").text
    return {(s.labels["route"], s.labels["code"]): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "paceline_request_errors_total"}


def test_every_error_answer_is_counted_by_its_code(tmp_path: Path) -> None:
    with make_client(f"sqlite:///{tmp_path / 'r.db'}", max_body_bytes=4096) as client:
        assert client.post("/v1/curricula", json=SPEC).status_code == 201
        assert client.get("/v1/curricula").status_code == 200
        answers = [
            client.get("/v1/curricula/absent"),  # raised by the use case
            client.get("/v1/curricula", params={"limit": 0}),  # request validation
            client.post("/v1/curricula/math/reports", content=b"x" * 5000,
                        headers={"Content-Type": "application/json"}),  # size middleware
            client.get("/nowhere"),  # the router
            client.put("/v1/curricula"),  # the router, another status
        ]
        assert [a.status_code for a in answers] == [404, 422, 413, 404, 405]
        counted = errors_by_code(client)
    assert counted == {
        ("/v1/curricula/{name}", "CURRICULUM_NOT_FOUND"): 1.0,
        ("/v1/curricula", "INVALID_REQUEST"): 1.0,
        ("unmatched", "PAYLOAD_TOO_LARGE"): 1.0,
        ("unmatched", "NOT_FOUND"): 1.0,
        ("/v1/curricula", "METHOD_NOT_ALLOWED"): 1.0,
    }


def test_the_api_description_is_counted_under_its_routes(tmp_path: Path) -> None:
    """/openapi.json, /docs and /redoc are Starlette routes that put no route in the
    scope: they were counted as `unmatched`, with the unknown paths and the refusals."""
    with make_client(f"sqlite:///{tmp_path / 'd.db'}") as client:
        for path in ("/openapi.json", "/docs", "/redoc", "/nowhere"):
            client.get(path)
        text = client.get("/metrics").text
    counted = {(s.labels["route"], s.labels["status"]): s.value
               for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "paceline_http_requests_total"}
    assert {("/openapi.json", "200"), ("/docs", "200"), ("/redoc", "200"),
            ("unmatched", "404")} <= set(counted)
    assert [route for route, status in counted if route == "unmatched"] == ["unmatched"]


def test_an_invented_method_makes_no_series_of_its_own(tmp_path: Path) -> None:
    """The `method` label came from the request line as the client wrote it: every new
    word (h11 takes any token, uvicorn's default parser some forty) was a new series on
    every route it was sent to, so a client could grow /metrics without bound."""
    with make_client(f"sqlite:///{tmp_path / 'm.db'}") as client:
        for i in range(5):
            assert client.request(f"INVENTED{i}", "/healthz").status_code == 405
            assert client.request(f"INVENTED{i}", f"/nowhere/{i}").status_code == 404
        assert client.request("PROPFIND", "/healthz").status_code == 405
        assert client.get("/healthz").status_code == 200
        text = client.get("/metrics").text
    methods = {(s.labels["method"], s.labels["route"]): s.value
               for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "paceline_http_requests_total"}
    assert methods[("other", "/healthz")] == 6.0
    assert methods[("other", "unmatched")] == 5.0
    assert methods[("GET", "/healthz")] == 1.0
    assert {m for m, _ in methods} == {"GET", "other"}


def test_a_retried_report_is_counted_once_and_as_a_retry(tmp_path: Path) -> None:
    """A report retried with its idempotency key (a client whose ack was lost) is
    applied once; it was counted again in `paceline_reports_total` and its rollouts again
    in `paceline_rollouts_total`, so a retry storm (a slow service, timing-out clients)
    looked like training going faster. Retries have a counter of their own."""
    with make_client(f"sqlite:///{tmp_path / 'r.db'}") as client:
        assert client.post("/v1/curricula", json=SPEC).status_code == 201
        assert client.post("/v1/curricula/math/runs", json={"run_id": "r"}).status_code == 201
        indices = client.post("/v1/curricula/math/batches",
                              json={"run_id": "r", "step": 0}).json()["indices"]
        body = {"run_id": "r", "step": 0, "indices": indices, "idempotency_key": "r/0",
                "rewards": [[[1.0, 5.0], [0.0, 9.0], [1.0, 2.0]] for _ in indices]}
        acks = [client.post("/v1/curricula/math/reports", json=body) for _ in range(3)]
        assert [a.json()["replayed"] for a in acks] == [False, True, True]
        text = client.get("/metrics").text
    counted = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert counted[("paceline_reports_total", (("curriculum", "math"),))] == 1.0
    assert counted[("paceline_report_replays_total", (("curriculum", "math"),))] == 2.0
    rollouts = 3.0 * len(indices)
    for kind in ("generated", "trained"):
        assert counted[("paceline_rollouts_total",
                        (("curriculum", "math"), ("kind", kind)))] == rollouts
    assert counted[("paceline_curriculum_seq", (("curriculum", "math"),))] == 1.0
