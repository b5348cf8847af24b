"""Validated once, before anything is queued or stored, with the same rules and the same
error codes over REST and gRPC (issue 18: F1, F2, F4, F5, F7), on SQLite and PostgreSQL.

Every case is refused with a 4xx / INVALID_ARGUMENT carrying the stable code, and the
curriculum's runs, state and head are exactly as before: no stored row that can no
longer be rendered.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient

from api_support import make_client
from paceline_server.app.service import PacelineService
from paceline_server.grpc.server import GrpcServer, create_server
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings
from paceline_server.store import open_store
from support import SPEC

CUR = "/v1/curricula/math"
SERVICE = "paceline.v1.Paceline"
JSON = {"Content-Type": "application/json"}


@dataclass
class Both:
    rest: TestClient
    call: Any  # (method, request) -> response, over gRPC
    server: GrpcServer
    service: PacelineService


@pytest.fixture
def both(database_url: str) -> Iterator[Both]:
    rest = make_client(database_url)
    rest.__enter__()
    config = Settings(database_url=database_url)
    service = PacelineService(open_store(database_url), config)
    server = create_server(service, config, port=0, host="127.0.0.1")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")

    def call(method: str, request: Any) -> Any:
        output = getattr(pb, {"AttachRun": "Run", "GetRun": "Run", "Heartbeat": "Run",
                              "NextBatch": "Batch", "Report": "ReportAck",
                              "GetCurriculum": "Curriculum", "ListRuns": "ListRunsResponse",
                              "CreateCurriculum": "CreateCurriculumResponse",
                              "GetState": "State"}[method])
        stub = channel.unary_unary(f"/{SERVICE}/{method}",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=output.FromString)
        return stub(request, timeout=10)

    assert rest.post("/v1/curricula", json=SPEC).status_code == 201
    assert rest.post(f"{CUR}/runs", json={"run_id": "r"}).status_code == 201
    yield Both(rest, call, server, service)
    channel.close()
    server.stop(0)
    service.store.close()
    rest.__exit__(None, None, None)


def snapshot(both: Both) -> tuple[Any, ...]:
    runs = both.rest.get(f"{CUR}/runs")
    state = both.rest.get(f"{CUR}/state")
    assert runs.status_code == 200 and state.status_code == 200, (runs.text, state.text)
    grpc_runs = both.call("ListRuns", pb.ListRunsRequest(curriculum="math"))
    return runs.json(), state.json(), both.rest.get(CUR).json()["seq"], len(grpc_runs.runs)


def refused_rest(both: Both, method: str, path: str, status: int, code: str, *,
                 raw: bytes | str | None = None, body: Any = None,
                 headers: dict[str, str] | None = None) -> None:
    before = snapshot(both)
    if raw is not None:
        content = raw.encode() if isinstance(raw, str) else raw
        response = both.rest.request(method, path, content=content, headers=headers or JSON)
    else:
        response = both.rest.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    assert snapshot(both) == before


def refused_grpc(both: Both, method: str, request: Any, code: str) -> None:
    before = snapshot(both)
    with pytest.raises(grpc.RpcError) as info:
        both.call(method, request)
    error: Any = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    trailer = dict(error.trailing_metadata())
    assert pb.ErrorInfo.FromString(trailer["paceline-error-bin"]).code == code
    assert snapshot(both) == before


# ------------------------------------------------------------------ F1: run metadata
BAD_METADATA = {
    "lone-surrogate": '{"a": "\\ud800"}',
    "surrogate-key": '{"\\udfff": 1}',
    "nul": '{"a": "x\\u0000y"}',
    "overflow": '{"a": 1e400}',
    "nan": '{"a": NaN}',
    "infinity": '{"a": [-Infinity]}',
    "huge-int": '{"a": 123456789012345678901234567890}',
    "too-large": json.dumps({"a": "x" * 70_000}),
}


@pytest.mark.parametrize("metadata", BAD_METADATA.values(), ids=BAD_METADATA.keys())
def test_run_metadata_that_cannot_be_stored_and_rendered_is_refused(both: Both,
                                                                    metadata: str) -> None:
    refused_rest(both, "POST", f"{CUR}/runs", 422, "INVALID_REQUEST",
                 raw='{"run_id": "m", "metadata": ' + metadata + "}")
    refused_grpc(both, "AttachRun", pb.AttachRunRequest(
        curriculum="math", run_id="m", metadata_json=metadata), "INVALID_REQUEST")


def test_metadata_of_every_json_kind_round_trips(both: Both) -> None:
    metadata = {"s": "многоязычный 🚀\ttab", "n": [1, -2.5, 1e300, 2**63 - 1], "b": True,
                "z": None, "o": {"deep": [{"x": 1}]}}
    created = both.rest.post(f"{CUR}/runs", json={"run_id": "m", "metadata": metadata})
    assert created.status_code == 201, created.text
    assert both.rest.get(f"{CUR}/runs/m").json()["metadata"] == metadata
    run = both.call("GetRun", pb.GetRunRequest(curriculum="math", run_id="m"))
    assert json.loads(run.metadata_json) == metadata


# ------------------------------------------------------------------ identifiers (F2, F5)
def test_a_lone_surrogate_idempotency_key_is_refused_before_it_is_queued(both: Both) -> None:
    batch = both.rest.post(f"{CUR}/batches", json={"run_id": "r", "step": 0}).json()
    body = {"run_id": "r", "step": 0, "indices": batch["indices"],
            "rewards": [[[1.0, 5.0]] for _ in batch["indices"]]}
    raw = json.dumps({**body, "idempotency_key": "KEY"}).replace("KEY", "\\ud800")
    refused_rest(both, "POST", f"{CUR}/reports", 422, "INVALID_REQUEST", raw=raw)
    refused_rest(both, "POST", f"{CUR}/runs", 422, "INVALID_REQUEST",
                 raw='{"run_id": "a\\ud800"}')


NUL = "a\x00b"


@pytest.mark.parametrize(("method", "request_"), [
    ("GetCurriculum", pb.GetCurriculumRequest(name=NUL)),
    ("AttachRun", pb.AttachRunRequest(curriculum=NUL, run_id="x")),
    ("AttachRun", pb.AttachRunRequest(curriculum="math", run_id=NUL)),
    ("AttachRun", pb.AttachRunRequest(curriculum="math", run_id="x" * 129)),
    ("GetRun", pb.GetRunRequest(curriculum="math", run_id="tab\there")),
    ("Heartbeat", pb.HeartbeatRequest(curriculum="math", run_id=NUL)),
    ("NextBatch", pb.NextBatchRequest(curriculum="math", run_id=NUL, step=0)),
    ("NextBatch", pb.NextBatchRequest(curriculum="math", run_id="r", step=2**62)),
    ("NextBatch", pb.NextBatchRequest(curriculum="math", run_id="r", step=0, size=2**62)),
    ("Report", pb.ReportRequest(curriculum="math", run_id="r", step=0, indices=[0],
                                rewards=pb.Array(shape=[1, 1, 2], f64=[1, 1]),
                                idempotency_key=NUL)),
    ("Report", pb.ReportRequest(curriculum="math", run_id="r", step=0, indices=[0],
                                rewards=pb.Array(shape=[1, 1, 2], f64=[1, 1]),
                                next_step=2**62)),
    ("GetState", pb.GetStateRequest(curriculum=NUL)),
], ids=["name", "curriculum", "run-id", "long-run-id", "control-run-id", "heartbeat",
        "batch-run-id", "batch-step", "batch-size", "key", "next-step", "state"])
def test_grpc_applies_the_identifier_and_integer_rules_of_rest(both: Both, method: str,
                                                              request_: Any) -> None:
    refused_grpc(both, method, request_, "INVALID_REQUEST")


def test_grpc_caps_a_report_step_as_rest_does(both: Both) -> None:
    request = pb.ReportRequest(curriculum="math", run_id="r", step=2**62, indices=[0],
                               rewards=pb.Array(shape=[1, 1, 2], f64=[1, 1]))
    refused_grpc(both, "Report", request, "INVALID_REPORT")
    refused_rest(both, "POST", f"{CUR}/reports", 422, "INVALID_REPORT", body={
        "run_id": "r", "step": 2**62, "indices": [0], "rewards": [[[1, 1]]]})


# ------------------------------------------------------------------ F4: typed arrays
def typed(dtype: Any, shape: Any, data: str = "") -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data": data}


BAD_TYPED = {
    "dtype-list": typed(["<f8"], [1, 1, 2], "AAAAAAAA8D8AAAAAAADwPw=="),
    "dtype-object": typed({"a": 1}, [0]),
    "dtype-number": typed(8, [0]),
    "overflowing-product": typed("<f8", [2**62, 2**62, 0]),
    "beyond-int64": typed("<f8", [2**64, 0]),
    "large-dims-with-zero": typed("<f8", [2**40, 2**40, 0]),
    "65-dimensions": typed("<f8", [1] * 65),
    "9-dimensions": typed("<f8", [1] * 9),
    "negative": typed("<f8", [-1]),
    "bool-dim": typed("<f8", [True]),
    "shape-not-list": typed("<f8", "1"),
    "data-not-base64": typed("<f8", [1, 1, 2], "AAAA!AAA8D8AAAAAAADwPw=="),
    "data-non-ascii": typed("<f8", [1, 1, 2], "AAAAAAAA8D8AAAAAAADwP\u00e9=="),
    "data-padding-inside": typed("<f8", [1, 1, 2], "AAAAAAAA8D8=AAAAAADwPw=="),
    "data-too-short": typed("<f8", [1, 1, 2], "AAAAAAAA8D8AAAAAAADwPw"),
}


@pytest.mark.parametrize("array", BAD_TYPED.values(), ids=BAD_TYPED.keys())
def test_malformed_typed_arrays_are_refused(both: Both, array: dict[str, Any]) -> None:
    refused_rest(both, "POST", f"{CUR}/reports", 422, "INVALID_REPORT", body={
        "run_id": "r", "step": 0, "indices": [0], "rewards": array})


@pytest.mark.parametrize("shape", [[2**62, 2**62, 0], [1] * 65, [2**40, 2**40, 0], [-1]],
                         ids=["overflow", "65-dims", "large-with-zero", "negative"])
def test_malformed_packed_arrays_are_refused_over_grpc(both: Both, shape: list[int]) -> None:
    refused_grpc(both, "Report", pb.ReportRequest(
        curriculum="math", run_id="r", step=0, indices=[0],
        rewards=pb.Array(shape=shape)), "INVALID_REPORT")


# ------------------------------------------------------------------ F7: types and media
@pytest.mark.parametrize("change", [
    {"step": True}, {"step": "100"}, {"step": 101.0}, {"step": None}, {"size": "2"},
    {"size": 2.0}, {"size": False}, {"run_id": 5},
], ids=["step-bool", "step-str", "step-float", "step-null", "size-str", "size-float",
        "size-bool", "run-id-int"])
def test_batch_requests_take_integers_only(both: Both, change: dict[str, Any]) -> None:
    refused_rest(both, "POST", f"{CUR}/batches", 422, "INVALID_REQUEST",
                 body={"run_id": "r", "step": 1, **change})


@pytest.mark.parametrize("value", ["yes", 1, "true", None])
def test_exist_ok_is_a_boolean(both: Both, value: Any) -> None:
    refused_rest(both, "POST", "/v1/curricula", 422, "INVALID_REQUEST",
                 body={**SPEC, "name": "other", "exist_ok": value})
    refused_grpc(both, "CreateCurriculum", pb.CreateCurriculumRequest(
        spec_json=json.dumps({**SPEC, "name": "other", "exist_ok": value})),
        "INVALID_REQUEST")


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/curricula", {**SPEC, "name": "zipped"}),
    (f"{CUR}/runs", {"run_id": "zipped"}),
    (f"{CUR}/batches", {"run_id": "r", "step": 3}),
], ids=["create", "attach", "batch"])
def test_gzip_bodies_are_read_on_every_route(both: Both, path: str, body: Any) -> None:
    response = both.rest.post(path, content=gzip.compress(json.dumps(body).encode()),
                              headers={**JSON, "Content-Encoding": "gzip"})
    assert response.status_code in (200, 201), response.text
    if path.endswith("batches"):  # the same request unzipped: the same batch
        assert both.rest.post(path, json=body).json() == response.json()
    else:  # created from the zipped body
        created = f"/v1/curricula/{body['name']}" if "name" in body else f"{CUR}/runs/zipped"
        assert both.rest.get(created).status_code == 200


@pytest.mark.parametrize("path", ["/v1/curricula", f"{CUR}/runs", f"{CUR}/batches"],
                         ids=["create", "attach", "batch"])
@pytest.mark.parametrize(("headers", "raw"), [
    ({"Content-Type": "text/plain"}, b'{"run_id": "r", "step": 1}'),
    ({"Content-Type": "application/xml"}, b"<run/>"),
    ({"Content-Type": "application/json", "Content-Encoding": "br"}, b"{}"),
], ids=["text", "xml", "brotli"])
def test_bodies_that_are_not_json_get_415(both: Both, path: str, headers: dict[str, str],
                                          raw: bytes) -> None:
    refused_rest(both, "POST", path, 415, "UNSUPPORTED_MEDIA_TYPE", raw=raw, headers=headers)


def test_bad_gzip_on_a_json_route(both: Both) -> None:
    refused_rest(both, "POST", f"{CUR}/runs", 400, "MALFORMED_BODY", raw=b"not gzip",
                 headers={**JSON, "Content-Encoding": "gzip"})
    bomb = gzip.compress(b" " * (70 * 1024 * 1024))
    refused_rest(both, "POST", f"{CUR}/runs", 413, "PAYLOAD_TOO_LARGE", raw=bomb,
                 headers={**JSON, "Content-Encoding": "gzip"})
