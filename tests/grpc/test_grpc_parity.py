"""REST and gRPC are codecs over one operation layer (app/operations.py): a value is
refused by the same rule with the same stable code whichever transport carried it, and
the operations refuse it as well when called in-process (as the embedded client does)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient

from paceline_server.api.app import create_app
from paceline_server.app.operations import (
    MAX_LIST,
    AttachRun,
    DeleteCurriculum,
    ListCurricula,
    ListRuns,
    Operations,
    RequestBatch,
    SubmitReport,
)
from paceline_server.app.refill import MAX_PARTS
from paceline_server.domain.errors import (
    InvalidPageToken,
    InvalidReport,
    InvalidRequest,
    PacelineError,
)
from paceline_server.domain.validation import MAX_INT
from paceline_server.grpc.server import create_server
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings
from support import SPEC

SERVICE = "paceline.v1.Paceline"
CUR = "/v1/curricula/math"
LONG = "x" * 129


@dataclass
class Both:
    rest: TestClient
    channel: grpc.Channel
    ops: Operations

    def call(self, method: str, request: Any) -> Any:
        output = getattr(pb, pb.DESCRIPTOR.services_by_name["Paceline"]
                         .methods_by_name[method].output_type.name)
        stub = self.channel.unary_unary(f"/{SERVICE}/{method}",
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=output.FromString)
        return stub(request, timeout=10)

    def grpc_code(self, method: str, request: Any) -> str:
        with pytest.raises(grpc.RpcError) as info:
            self.call(method, request)
        error: Any = info.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        trailer = dict(error.trailing_metadata())
        return str(pb.ErrorInfo.FromString(trailer["paceline-error-bin"]).code)

    def rest_code(self, method: str, path: str, **kwargs: Any) -> str:
        answer = self.rest.request(method, path, **kwargs)
        assert answer.status_code == 422, answer.text
        return str(answer.json()["error"]["code"])


@pytest.fixture
def both(tmp_path: Path) -> Iterator[Both]:
    config = Settings(database_url=f"sqlite:///{tmp_path / 'p.db'}", auto_migrate=True)
    app = create_app(config)
    server = create_server(app.state.service, config, port=0, host="127.0.0.1")
    server.start()
    try:
        with TestClient(app) as rest, \
                grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert rest.post("/v1/curricula", json=SPEC).status_code == 201
            assert rest.post(f"{CUR}/runs", json={"run_id": "r"}).status_code == 201
            yield Both(rest, channel, app.state.operations)
    finally:
        server.stop(0)


def report(**change: Any) -> dict[str, Any]:
    return {"run_id": "r", "step": 0, "indices": [0], "rewards": [[[1.0, 2.0]]],
            "unserved": "accept", **change}


def test_a_long_curriculum_name_is_refused_alike(both: Both) -> None:
    """REST used to look it up (404), gRPC refused it (422): now both refuse it."""
    assert both.rest_code("GET", f"/v1/curricula/{LONG}") == "INVALID_REQUEST"
    assert both.grpc_code("GetCurriculum", pb.GetCurriculumRequest(name=LONG)) \
        == "INVALID_REQUEST"
    assert both.rest_code("GET", f"{CUR}/runs/{LONG}") == "INVALID_REQUEST"
    assert both.grpc_code("GetRun", pb.GetRunRequest(curriculum="math", run_id=LONG)) \
        == "INVALID_REQUEST"


def test_an_integer_of_thousands_of_digits_is_a_malformed_body_on_both(both: Both) -> None:
    """A JSON integer past Python's 4300-digit conversion limit: REST answered 400
    MALFORMED_BODY, gRPC a bare INTERNAL (500) with a traceback in the log."""
    huge = "9" * 5000
    answer = both.rest.post(f"{CUR}/runs",
                            content=f'{{"run_id": "h", "metadata": {{"a": {huge}}}}}',
                            headers={"content-type": "application/json"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "MALFORMED_BODY")
    for method, request in (
            ("AttachRun", pb.AttachRunRequest(curriculum="math", run_id="h",
                                              metadata_json=f'{{"a": {huge}}}')),
            ("CreateCurriculum", pb.CreateCurriculumRequest(
                spec_json=json.dumps({**SPEC, "name": "big"})[:-1] + f', "seed": {huge}}}'))):
        with pytest.raises(grpc.RpcError) as info:
            both.call(method, request)
        error: Any = info.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        found = pb.ErrorInfo.FromString(dict(error.trailing_metadata())["paceline-error-bin"])
        assert (found.code, found.http_status) == ("MALFORMED_BODY", 400)


def test_a_report_run_id_with_a_nul_is_an_invalid_report_on_both(both: Both) -> None:
    """gRPC answered INVALID_REQUEST from its own pre-check, REST INVALID_REPORT."""
    assert both.rest_code("POST", f"{CUR}/reports", json=report(run_id="r\x00")) \
        == "INVALID_REPORT"
    assert both.grpc_code("Report", pb.ReportRequest(
        curriculum="math", run_id="r\x00", step=0, indices=[0], unserved="accept",
        rewards=pb.Array(shape=[1, 1, 2], f64=[1, 2]))) == "INVALID_REPORT"


def test_groups_without_rollouts_are_an_invalid_report_on_both(both: Both) -> None:
    """Every served prompt with zero rollouts: the samplers' group sums used to fail on
    it (500 INTERNAL, and the REST connection dropped) where it is the report's fault."""
    assert both.rest_code("POST", f"{CUR}/reports", json=report(rewards=[[]])) \
        == "INVALID_REPORT"
    assert both.grpc_code("Report", pb.ReportRequest(
        curriculum="math", run_id="r", step=0, indices=[0], unserved="accept",
        rewards=pb.Array(shape=[1, 0, 2], f64=[]))) == "INVALID_REPORT"
    with pytest.raises(InvalidReport):
        both.ops.report(SubmitReport("math", report(rewards=[[]])))
    assert both.rest.get(CUR).json()["seq"] == 0
    assert both.rest.post(f"{CUR}/reports", json=report()).status_code == 200


def test_list_bounds_alike(both: Both) -> None:
    assert both.rest_code("GET", "/v1/curricula", params={"limit": 1001}) \
        == "INVALID_REQUEST"
    assert both.grpc_code("ListCurricula", pb.ListCurriculaRequest(limit=1001)) \
        == "INVALID_REQUEST"
    assert both.rest_code("GET", "/v1/curricula", params={"offset": MAX_INT + 1}) \
        == "INVALID_REQUEST"
    for bad in ({"limit": 1001}, {"limit": -1}, {"offset": -1}):
        assert both.rest_code("GET", f"{CUR}/runs", params=bad) == "INVALID_REQUEST", bad
        assert both.grpc_code("ListRuns", pb.ListRunsRequest(curriculum="math", **bad)) \
            == "INVALID_REQUEST", bad


def test_runs_are_paged_alike(both: Both) -> None:
    """ListRuns pages as GET .../runs does: `limit` runs (0: 100) from `offset`, oldest
    first. (It had neither field and answered every run at once.)"""
    for i in range(102):
        assert both.rest.post(f"{CUR}/runs", json={"run_id": f"r{i:03d}"}).status_code == 201

    def grpc_ids(**page: int) -> list[str]:
        answer = both.call("ListRuns", pb.ListRunsRequest(curriculum="math", **page))
        return [run.run_id for run in answer.runs]

    def rest_ids(**page: int) -> list[str]:
        return [r["run_id"] for r in both.rest.get(f"{CUR}/runs", params=page).json()["runs"]]

    every = ["r"] + [f"r{i:03d}" for i in range(102)]
    assert grpc_ids() == rest_ids() == every[:100]
    assert grpc_ids(limit=0, offset=100) == rest_ids(offset=100) == every[100:]
    assert grpc_ids(limit=2, offset=1) == rest_ids(limit=2, offset=1) == ["r000", "r001"]
    assert grpc_ids(limit=1000) == every


def test_batch_arguments_alike(both: Both) -> None:
    for body in ({"run_id": "", "step": 0}, {"run_id": "r", "step": MAX_INT + 1},
                 {"run_id": "r", "step": 0, "size": 0},
                 {"run_id": "r", "step": 0, "part": MAX_PARTS + 1}):
        assert both.rest_code("POST", f"{CUR}/batches", json=body) == "INVALID_REQUEST", body
        assert both.grpc_code("NextBatch", pb.NextBatchRequest(curriculum="math", **body)) \
            == "INVALID_REQUEST", body


def test_next_batch_asked_with_a_report_alike(both: Both) -> None:
    assert both.rest_code("POST", f"{CUR}/reports", json=report(),
                          params={"next_step": MAX_INT + 1}) == "INVALID_REQUEST"
    assert both.rest_code("POST", f"{CUR}/reports", json=report(),
                          params={"next_step": 1, "next_size": 0}) == "INVALID_REQUEST"
    assert both.grpc_code("Report", pb.ReportRequest(
        curriculum="math", run_id="r", step=0, indices=[0], unserved="accept",
        rewards=pb.Array(shape=[1, 1, 2], f64=[1, 2]), next_step=1, next_size=0)) \
        == "INVALID_REQUEST"
    assert both.rest.get(CUR).json()["seq"] == 0  # nothing was folded


def test_exist_ok_must_be_a_boolean_alike(both: Both) -> None:
    spec = {**SPEC, "exist_ok": "yes"}
    assert both.rest_code("POST", "/v1/curricula", json=spec) == "INVALID_REQUEST"
    assert both.grpc_code("CreateCurriculum", pb.CreateCurriculumRequest(
        spec_json=json.dumps(spec))) == "INVALID_REQUEST"


def test_an_unknown_layout_field_is_refused_alike(both: Both) -> None:
    """Every level of a spec refuses a field it does not know (a misspelt one would be
    ignored silently otherwise); the layout read `distributions` and dropped the rest."""
    for extra in ({"lables": [0, 1]}, {"sizes": [60, 40]}):
        spec = {**SPEC, "name": "other", "layout": {**SPEC["layout"], **extra}}
        assert both.rest_code("POST", "/v1/curricula", json=spec) == "INVALID_SPEC"
        assert both.grpc_code("CreateCurriculum", pb.CreateCurriculumRequest(
            spec_json=json.dumps(spec))) == "INVALID_SPEC"
    assert both.rest.get("/v1/curricula/other").status_code == 404
    # the forms that are documented still work: {distributions} and {labels, names}
    spec = {**SPEC, "name": "labelled",
            "layout": {"names": ["easy", "hard"], "labels": [0, 1, 1, 0]}, "batch_size": 2}
    assert both.rest.post("/v1/curricula", json=spec).status_code == 201


def test_only_numbers_are_read_as_numbers_alike(both: Both) -> None:
    """A label `true` in a spec (gRPC's spec_json, REST's body), an index `true` or a
    reward "1" was read as the number 1 (numpy's conversion): both transports, and the
    operations called in process, refuse it with the code of their other malformed
    arrays."""
    spec = {**SPEC, "name": "labelled", "batch_size": 2,
            "layout": {"names": ["easy", "hard"], "labels": [0, 1, True, 0]}}
    assert both.rest_code("POST", "/v1/curricula", json=spec) == "INVALID_SPEC"
    assert both.grpc_code("CreateCurriculum", pb.CreateCurriculumRequest(
        spec_json=json.dumps(spec))) == "INVALID_SPEC"
    assert both.rest.get("/v1/curricula/labelled").status_code == 404
    for change in ({"rewards": [[["1", 2.0]]]}, {"rewards": [[[None, 2.0]]]},
                   {"indices": [0, True], "rewards": [[[1.0, 2.0]]] * 2},
                   {"eval_objectives": {"acc": "1", "len": 2.0}}):
        assert both.rest_code("POST", f"{CUR}/reports", json=report(**change)) \
            == "INVALID_REPORT"
        with pytest.raises(InvalidReport, match="array of"):
            both.ops.report(SubmitReport("math", report(**change)))
    assert both.rest.get(CUR).json()["seq"] == 0  # nothing was folded
    # booleans are 0/1 as a report's values (pass/fail), as they were
    assert both.rest.post(f"{CUR}/reports", json=report(rewards=[[[True, 2]]])).json()["seq"] == 1


def test_page_tokens_alike(both: Both) -> None:
    """ListCurricula and ListRuns page by token as the REST listings do: the same tokens
    (one handed out by either transport continues on the other), empty on the last page,
    and the same refusals of a bad token or of a token with an offset."""
    for name in ("b", "c"):
        assert both.rest.post("/v1/curricula", json={**SPEC, "name": name}).status_code == 201
    for run_id in ("r2", "r3"):
        assert both.rest.post(f"{CUR}/runs", json={"run_id": run_id}).status_code == 201
    rest = both.rest.get("/v1/curricula", params={"limit": 1}).json()
    first = both.call("ListCurricula", pb.ListCurriculaRequest(limit=1))
    assert [c.name for c in first.curricula] == ["b"]
    assert first.next_page_token == rest["next_page_token"]
    second = both.call("ListCurricula", pb.ListCurriculaRequest(
        limit=1, page_token=rest["next_page_token"]))
    assert [c.name for c in second.curricula] == ["c"]
    last = both.rest.get("/v1/curricula", params={"page_token": second.next_page_token})
    assert ([c["name"] for c in last.json()["curricula"]], last.json()["next_page_token"]) \
        == (["math"], None)
    assert both.call("ListCurricula", pb.ListCurriculaRequest(
        page_token=second.next_page_token)).next_page_token == ""

    runs = both.call("ListRuns", pb.ListRunsRequest(curriculum="math", limit=2))
    assert [r.run_id for r in runs.runs] == ["r", "r2"]
    rest_runs = both.rest.get(f"{CUR}/runs", params={"page_token": runs.next_page_token})
    assert [r["run_id"] for r in rest_runs.json()["runs"]] == ["r3"]
    assert rest_runs.json()["next_page_token"] is None

    bad = [("ListCurricula", "/v1/curricula", "not a token!"),
           ("ListCurricula", "/v1/curricula", runs.next_page_token),
           ("ListRuns", f"{CUR}/runs", first.next_page_token),
           ("ListRuns", "/v1/curricula/b/runs", runs.next_page_token)]
    for method, path, token in bad:
        assert both.rest_code("GET", path, params={"page_token": token}) \
            == "INVALID_PAGE_TOKEN", (path, token)
        request = (pb.ListCurriculaRequest(page_token=token) if method == "ListCurricula"
                   else pb.ListRunsRequest(curriculum=path.split("/")[3], page_token=token))
        assert both.grpc_code(method, request) == "INVALID_PAGE_TOKEN", (method, token)
    assert both.grpc_code("ListCurricula", pb.ListCurriculaRequest(
        offset=1, page_token=first.next_page_token)) == "INVALID_REQUEST"
    assert both.grpc_code("ListRuns", pb.ListRunsRequest(
        curriculum="math", offset=2, page_token=runs.next_page_token)) == "INVALID_REQUEST"


def test_a_runs_token_of_a_recreated_curriculum_is_refused_alike(both: Both) -> None:
    """ListRuns, as the REST listing: a token of a curriculum since deleted and created
    again is refused (ABORTED / 409, code CONFLICT) rather than continued into the new
    one's runs, and the new one's listing starts over."""
    for run_id in ("r2", "r3"):
        assert both.rest.post(f"{CUR}/runs", json={"run_id": run_id}).status_code == 201
    stale = both.call("ListRuns", pb.ListRunsRequest(curriculum="math", limit=1))
    assert both.rest.delete(CUR, params={"confirm": "math"}).status_code == 204
    assert both.rest.post("/v1/curricula", json=SPEC).status_code == 201
    for run_id in ("r", "r2", "r3"):
        assert both.rest.post(f"{CUR}/runs", json={"run_id": run_id}).status_code == 201
    with pytest.raises(grpc.RpcError) as info:
        both.call("ListRuns", pb.ListRunsRequest(curriculum="math",
                                                 page_token=stale.next_page_token))
    error: Any = info.value
    assert error.code() == grpc.StatusCode.ABORTED, error.details()
    trailer = dict(error.trailing_metadata())
    assert pb.ErrorInfo.FromString(trailer["paceline-error-bin"]).code == "CONFLICT"
    answer = both.rest.get(f"{CUR}/runs", params={"page_token": stale.next_page_token})
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "CONFLICT")
    first = both.call("ListRuns", pb.ListRunsRequest(curriculum="math", limit=2))
    assert [r.run_id for r in first.runs] == ["r", "r2"]
    rest = both.call("ListRuns", pb.ListRunsRequest(curriculum="math",
                                                    page_token=first.next_page_token))
    assert ([r.run_id for r in rest.runs], rest.next_page_token) == (["r3"], "")


def test_the_operations_refuse_in_process(both: Both) -> None:
    """What a transport passes on unchecked is checked here, before the store is read."""
    ops = both.ops
    refused: list[tuple[Any, type[PacelineError]]] = [
        (lambda: ops.get_curriculum("ma\x00th"), InvalidRequest),
        (lambda: ops.state(LONG), InvalidRequest),
        (lambda: ops.list_runs(ListRuns("")), InvalidRequest),
        (lambda: ops.list_runs(ListRuns("math", limit=MAX_LIST + 1)), InvalidRequest),
        (lambda: ops.list_runs(ListRuns("math", offset=-1)), InvalidRequest),
        (lambda: ops.heartbeat("math", "r\ud800"), InvalidRequest),
        (lambda: ops.list_curricula(ListCurricula(limit=0)), InvalidRequest),
        (lambda: ops.list_curricula(ListCurricula(offset=True)), InvalidRequest),  # type: ignore[arg-type]
        (lambda: ops.list_curricula(ListCurricula(page_token="x")), InvalidPageToken),
        (lambda: ops.list_curricula(ListCurricula(page_token=7)), InvalidRequest),  # type: ignore[arg-type]
        (lambda: ops.list_runs(ListRuns("math", page_token="!")), InvalidPageToken),
        (lambda: ops.delete_curriculum(DeleteCurriculum("math", "MATH")), InvalidRequest),
        (lambda: ops.attach_run(AttachRun("math", "r\x00")), InvalidRequest),
        (lambda: ops.attach_run(AttachRun("math", "n", {"a": float("nan")})), InvalidRequest),
        (lambda: ops.batch(RequestBatch("math", "r", -1)), InvalidRequest),
        (lambda: ops.batch(RequestBatch("math", "r", 0, part=-1)), InvalidRequest),
        (lambda: ops.report(SubmitReport("math", report(), idempotency_key=7)),  # type: ignore[arg-type]
         InvalidRequest),
        (lambda: ops.report(SubmitReport("math", report(), next_size=4)), InvalidRequest),
        (lambda: ops.report(SubmitReport("math", report(step="0"))), InvalidReport),
    ]
    for call, error in refused:
        with pytest.raises(error):
            call()
    assert both.rest.get(CUR).json()["seq"] == 0
    assert [r["run_id"] for r in both.rest.get(f"{CUR}/runs").json()["runs"]] == ["r"]
    # and what is valid goes through
    view = ops.report(SubmitReport("math", report(), "k", next_step=1))
    assert view.ack.seq == 1 and view.batch is not None
    assert view.batch.objectives == ("acc", "len")
    assert view.batch.distributions == ("easy", "hard")


def test_a_dashboard_page_prefetches_only_names_a_curriculum_can_have(
        both: Both, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard's page shell (public) warms the curriculum's history; a path no
    curriculum can have is not looked up, in the background or anywhere."""
    seen: list[str] = []
    monkeypatch.setattr(both.ops.service.histories, "prefetch",
                        lambda name, then=None: seen.append(name))
    for path in ("math", "ma%00th", "x" * 129):
        page = both.rest.get(f"/ui/c/{path}")
        assert page.status_code == 200 and "<html" in page.text.lower()
    assert seen == ["math"]
