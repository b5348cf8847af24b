"""A catalogue of hostile inputs, on SQLite and PostgreSQL: every one is refused with a
clear 4xx and a stable error code, and leaves the service byte for byte as it was: the
state, the curriculum, its runs, the list of curricula and the export of its event log.

It extends `tests/api/test_api.py::TestBadInputLeavesStateUntouched` (NaN rewards, an
index past the end, a wrong objective count, an unknown run or field, a missing step,
bad JSON, XML, bad gzip, oversize bodies) without repeating those cases.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fastapi.testclient import TestClient

from api_support import make_client
from paceline_server import cli
from support import SPEC, fresh_pg_schema

CUR = "/v1/curricula/math"
REPORTS = f"{CUR}/reports"
JSON = {"Content-Type": "application/json"}
MSGPACK = {"Content-Type": "application/msgpack"}


@dataclass(frozen=True)
class Bad:
    id: str
    method: str
    path: str
    status: int
    code: str
    body: Any = None  # sent as JSON
    raw: bytes | None = None  # sent as is, with `headers`
    headers: dict[str, str] = field(default_factory=dict)


def report(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"run_id": "run-1", "step": 7, "indices": [1, 2],
                            "rewards": [[[1.0, 10.0], [0.0, 20.0]], [[1.0, 5.0], [1.0, 9.0]]]}
    body.update(change)
    return body


def unserved(**change: Any) -> dict[str, Any]:
    """`report(**change)` for a step Paceline did not serve, taken as such: valid but for
    `change`, so a refusal is `change`'s."""
    return report(unserved="accept", **change)


def raw_report(fragment: str) -> bytes:
    """A report whose `rewards` (or extra fields) are JSON text Python's encoder would
    never write (Infinity, NaN, 1e999)."""
    return ('{"run_id": "run-1", "step": 7, "indices": [1], ' + fragment + "}").encode()


def deep(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


CASES = [
    # -- non-finite numbers, in every numeric field
    Bad("inf-reward", "POST", REPORTS, 422, "INVALID_REPORT",
        raw=raw_report('"rewards": [[[Infinity, 1.0]]]'), headers=JSON),
    Bad("overflowing-reward", "POST", REPORTS, 422, "INVALID_REPORT",
        raw=raw_report('"rewards": [[[-1e999, 1.0]]]'), headers=JSON),
    Bad("nan-advantage", "POST", REPORTS, 422, "INVALID_REPORT",
        raw=raw_report('"rewards": [[[1.0, 1.0]]], "advantages": [[NaN]]'), headers=JSON),
    Bad("nan-eval-objective", "POST", REPORTS, 422, "INVALID_REPORT",
        raw=raw_report('"rewards": [[[1.0, 1.0]]], "eval_objectives": [NaN, 1.0]'),
        headers=JSON),
    Bad("nan-grad-products", "POST", REPORTS, 422, "INVALID_REPORT",
        raw=raw_report('"rewards": [[[1, 1]]], "grad_products": [[NaN, 1], [1, 1]]'),
        headers=JSON),
    Bad("nan-weight-in-spec", "POST", "/v1/curricula", 422, "INVALID_PARAMS",
        raw=json.dumps({**SPEC, "name": "nan", "weighting": {
            "kind": "fixed", "weights": [float("nan"), 1.0]}}).encode(), headers=JSON),
    Bad("inf-bound-in-spec", "POST", "/v1/curricula", 422, "INVALID_SPEC",
        raw=json.dumps({**SPEC, "name": "inf", "objectives": [
            "acc", {"name": "len", "bounds": [0, float("inf")]}]}).encode(), headers=JSON),
    # -- indices: negative, past any integer type, not integers
    Bad("negative-index", "POST", REPORTS, 422, "INDEX_OUT_OF_RANGE",
        body=report(indices=[-1, 2])),
    Bad("index-past-int64", "POST", REPORTS, 422, "INVALID_REPORT",
        body=report(indices=[2**64, 2])),
    Bad("fractional-index", "POST", REPORTS, 422, "INVALID_REPORT",
        body=report(indices=[1.5, 2])),
    Bad("boolean-indices", "POST", REPORTS, 422, "INVALID_REPORT",
        body=report(indices=[True, False])),
    Bad("string-index", "POST", REPORTS, 422, "INVALID_REPORT",
        body=report(indices=["1", 2])),
    # -- strings and null where numbers are meant, booleans where integers are: numpy
    # read "1" as 1.0 and true among indices as 1, and the report was folded
    Bad("string-reward", "POST", REPORTS, 422, "INVALID_REPORT",
        body=unserved(rewards=[[["1", 10.0], [0.0, 20.0]], [[1.0, 5.0], [1.0, 9.0]]])),
    Bad("null-reward", "POST", REPORTS, 422, "INVALID_REPORT",
        body=unserved(rewards=[[[None, 10.0], [0.0, 20.0]], [[1.0, 5.0], [1.0, 9.0]]])),
    Bad("string-advantage", "POST", REPORTS, 422, "INVALID_REPORT",
        body=unserved(advantages=[["0.5", 0.5], [0.5, 0.5]])),
    Bad("string-grad-products", "POST", REPORTS, 422, "INVALID_REPORT",
        body=unserved(grad_products=[["1", 0], [0, 1]])),
    Bad("string-eval-objective", "POST", REPORTS, 422, "INVALID_REPORT",
        body=unserved(eval_objectives=["0.5", 1.0])),
    Bad("string-eval-objective-by-name", "POST", REPORTS, 422, "INVALID_REPORT",
        body=unserved(eval_objectives={"acc": "1", "len": 1.0})),
    Bad("boolean-among-indices", "POST", REPORTS, 422, "INVALID_REPORT",
        body=unserved(indices=[1, True])),
    Bad("string-flat-reward", "POST", REPORTS, 422, "INVALID_REPORT",
        body={"run_id": "run-1", "step": 7, "rollout_indices": [1, 2],
              "rewards": [[1, 1], [1, "0.5"]], "unserved": "accept"}),
    Bad("boolean-dropped", "POST", REPORTS, 422, "INVALID_REPORT",
        body=unserved(dropped=[1, True])),
    Bad("string-reward-msgpack", "POST", REPORTS, 422, "INVALID_REPORT",
        raw=msgpack.packb(unserved(rewards=[[["1", 10.0], [0.0, 20.0]],
                                      [[1.0, 5.0], [1.0, 9.0]]])), headers=MSGPACK),
    Bad("boolean-label-in-spec", "POST", "/v1/curricula", 422, "INVALID_SPEC",
        body={**SPEC, "name": "boollabel", "layout": {
            "names": ["a", "b"], "labels": [0, True] + [0, 1] * 8}}),
    # -- shapes: huge, ragged, mismatched, empty
    Bad("huge-indices-one-group", "POST", REPORTS, 422, "INVALID_REPORT",
        body=report(indices=list(range(100)) * 2000, rewards=[[[1.0, 1.0]]])),
    Bad("ragged-rewards", "POST", REPORTS, 422, "INVALID_REPORT",
        body=report(rewards=[[[1.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]]])),
    Bad("rewards-nested-500-deep", "POST", REPORTS, 422, "INVALID_REPORT",
        raw=raw_report(f'"rewards": {deep(500)}'), headers=JSON),
    Bad("advantages-wrong-shape", "POST", REPORTS, 422, "INVALID_REPORT",
        body=report(advantages=[[0.5, 0.5, 0.5]])),
    Bad("grad-products-wrong-shape", "POST", REPORTS, 422, "INVALID_REPORT",
        body=report(grad_products=[[1.0]])),
    Bad("flat-group-ids-mismatch", "POST", REPORTS, 422, "INVALID_REPORT",
        body={"run_id": "run-1", "step": 7, "rollout_indices": [1, 2],
              "rewards": [[1, 1], [1, 1]], "group_ids": [0]}),
    Bad("empty-report", "POST", REPORTS, 422, "INVALID_REPORT",
        body=report(indices=[], rewards=[])),
    # -- unknown objectives
    Bad("eval-unknown-objective", "POST", REPORTS, 422, "INVALID_REPORT",
        body=report(eval_objectives={"bogus": 1.0})),
    Bad("spec-unknown-direction", "POST", "/v1/curricula", 422, "INVALID_SPEC",
        body={**SPEC, "name": "dir", "objectives": [{"name": "acc", "direction": "up"}]}),
    Bad("spec-duplicate-objectives", "POST", "/v1/curricula", 422, "INVALID_SPEC",
        body={**SPEC, "name": "dup", "objectives": ["acc", "acc"]}),
    # -- integers out of range
    Bad("step-past-2**53", "POST", REPORTS, 422, "INVALID_REPORT", body=report(step=2**53)),
    Bad("negative-step", "POST", REPORTS, 422, "INVALID_REPORT", body=report(step=-1)),
    Bad("batch-step-past-2**53", "POST", f"{CUR}/batches", 422, "INVALID_REQUEST",
        body={"run_id": "run-1", "step": 2**53}),
    Bad("batch-size-zero", "POST", f"{CUR}/batches", 422, "INVALID_REQUEST",
        body={"run_id": "run-1", "step": 0, "size": 0}),
    Bad("distribution-size-2**70", "POST", "/v1/curricula", 422, "INVALID_SPEC",
        body={**SPEC, "name": "big", "layout": {"distributions": [
            {"name": "a", "size": 2**70}]}}),
    Bad("negative-labels", "POST", "/v1/curricula", 422, "INVALID_SPEC",
        body={**SPEC, "name": "neg", "layout": {"names": ["a"], "labels": [-1] * 4}}),
    Bad("offset-past-2**53", "GET", f"/v1/curricula?offset={2**60}", 422, "INVALID_REQUEST"),
    Bad("limit-not-a-number", "GET", "/v1/curricula?limit=ten", 422, "INVALID_REQUEST"),
    # -- malformed encodings
    Bad("truncated-gzip", "POST", REPORTS, 400, "MALFORMED_BODY",
        raw=gzip.compress(json.dumps(report()).encode())[:-6],
        headers={**JSON, "Content-Encoding": "gzip"}),
    Bad("gzip-then-garbage", "POST", REPORTS, 400, "MALFORMED_BODY",
        raw=gzip.compress(json.dumps(report()).encode()) + b"garbage",
        headers={**JSON, "Content-Encoding": "gzip"}),
    Bad("gzip-of-binary", "POST", REPORTS, 400, "MALFORMED_BODY",
        raw=gzip.compress(b"\xff\xfe\x00"), headers={**JSON, "Content-Encoding": "gzip"}),
    Bad("brotli-encoding", "POST", REPORTS, 415, "UNSUPPORTED_MEDIA_TYPE",
        raw=b"{}", headers={**JSON, "Content-Encoding": "br"}),
    Bad("invalid-utf8", "POST", REPORTS, 400, "MALFORMED_BODY",
        raw=b'{"run_id": "\xff"}', headers=JSON),
    Bad("empty-body", "POST", REPORTS, 400, "MALFORMED_BODY", raw=b"", headers=JSON),
    # not JSON: the same answer on the routes FastAPI parses as on the report route
    Bad("spec-not-json", "POST", "/v1/curricula", 400, "MALFORMED_BODY", raw=b"{nope",
        headers=JSON),
    Bad("batch-not-json", "POST", f"{CUR}/batches", 400, "MALFORMED_BODY", raw=b"{nope",
        headers=JSON),
    Bad("run-not-json", "POST", f"{CUR}/runs", 400, "MALFORMED_BODY", raw=b"{nope",
        headers=JSON),
    Bad("top-level-array", "POST", REPORTS, 422, "INVALID_REPORT", raw=b"[1, 2]",
        headers=JSON),
    Bad("msgpack-array-bomb", "POST", REPORTS, 400, "MALFORMED_BODY",
        raw=b"\xdd\xff\xff\xff\xff", headers=MSGPACK),
    Bad("msgpack-binary-keys", "POST", REPORTS, 400, "MALFORMED_BODY",
        raw=msgpack.packb({b"run_id": "run-1"}), headers=MSGPACK),
    Bad("msgpack-truncated", "POST", REPORTS, 400, "MALFORMED_BODY",
        raw=msgpack.packb(report())[:-3], headers=MSGPACK),
    # -- deeply nested documents
    Bad("report-nested-100k-deep", "POST", REPORTS, 400, "MALFORMED_BODY",
        raw=deep(100_000).encode(), headers=JSON),
    Bad("spec-nested-100k-deep", "POST", "/v1/curricula", 400, "MALFORMED_BODY",
        raw=deep(100_000).encode(), headers=JSON),
    Bad("msgpack-nested-100k-deep", "POST", REPORTS, 400, "MALFORMED_BODY",
        raw=b"\x91" * 100_000 + b"\xc0", headers=MSGPACK),
    Bad("run-metadata-900-deep", "POST", f"{CUR}/runs", 422, "INVALID_REQUEST",
        raw=('{"run_id": "r-deep", "metadata": ' + '{"a": ' * 900 + "1" + "}" * 900
             + "}").encode(), headers=JSON),
    # -- wrong content types
    Bad("text-plain-report", "POST", REPORTS, 415, "UNSUPPORTED_MEDIA_TYPE",
        raw=json.dumps(report()).encode(), headers={"Content-Type": "text/plain"}),
    Bad("form-report", "POST", REPORTS, 415, "UNSUPPORTED_MEDIA_TYPE",
        raw=b"run_id=run-1&step=7",
        headers={"Content-Type": "application/x-www-form-urlencoded"}),
    Bad("multipart-report", "POST", REPORTS, 415, "UNSUPPORTED_MEDIA_TYPE",
        raw=b"--b\r\n\r\n{}\r\n--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"}),
    Bad("text-plain-spec", "POST", "/v1/curricula", 415, "UNSUPPORTED_MEDIA_TYPE",
        raw=json.dumps({**SPEC, "name": "plain"}).encode(),
        headers={"Content-Type": "text/plain"}),
    # -- unicode and SQL metacharacters in names and ids
    Bad("cjk-curriculum-name", "POST", "/v1/curricula", 422, "INVALID_SPEC",
        body={**SPEC, "name": "数学"}),
    Bad("zero-width-in-name", "POST", "/v1/curricula", 422, "INVALID_SPEC",
        body={**SPEC, "name": "ma\u200bth"}),
    Bad("rtl-override-distribution", "POST", "/v1/curricula", 422, "INVALID_SPEC",
        body={**SPEC, "name": "rtl", "layout": {"distributions": [
            {"name": "\u202eeasy", "size": 5}]}}),
    Bad("sql-in-curriculum-name", "POST", "/v1/curricula", 422, "INVALID_SPEC",
        body={**SPEC, "name": "x'; DROP TABLE events; --"}),
    Bad("sql-in-objective-name", "POST", "/v1/curricula", 422, "INVALID_SPEC",
        body={**SPEC, "name": "sqlobj", "objectives": ["acc\" OR 1=1 --"]}),
    Bad("sql-in-path", "GET", "/v1/curricula/x'%3B%20DROP%20TABLE%20events%3B--", 404,
        "CURRICULUM_NOT_FOUND"),
    Bad("sql-in-report-run-id", "POST", REPORTS, 404, "RUN_NOT_FOUND",
        body=report(run_id="'; DELETE FROM events; --")),
    Bad("sql-in-batch-path", "POST", "/v1/curricula/math'--/batches", 404,
        "CURRICULUM_NOT_FOUND", body={"run_id": "run-1", "step": 0}),
    Bad("nul-in-curriculum-path", "GET", "/v1/curricula/ma%00th", 422, "INVALID_REQUEST"),
    Bad("nul-in-run-path", "POST", f"{CUR}/runs/run%00-1/heartbeat", 422, "INVALID_REQUEST"),
    Bad("nul-in-new-run-id", "POST", f"{CUR}/runs", 422, "INVALID_REQUEST",
        body={"run_id": "run\u0000-2"}),
    Bad("nul-in-report-run-id", "POST", REPORTS, 422, "INVALID_REPORT",
        body=report(run_id="run\u0000-1")),
    Bad("nul-in-batch-run-id", "POST", f"{CUR}/batches", 422, "INVALID_REQUEST",
        body={"run_id": "run\u0000-1", "step": 0}),
    Bad("run-id-too-long", "POST", f"{CUR}/runs", 422, "INVALID_REQUEST",
        body={"run_id": "r" * 129}),
    # -- idempotency keys that would silently lose their meaning
    Bad("idempotency-key-not-a-string", "POST", REPORTS, 422, "INVALID_REQUEST",
        body=report(idempotency_key=7)),
    Bad("idempotency-key-control-chars", "POST", REPORTS, 422, "INVALID_REQUEST",
        body=report(idempotency_key="run-1/\t7")),
    Bad("idempotency-key-too-long", "POST", REPORTS, 422, "INVALID_REQUEST",
        body=report(), headers={"Idempotency-Key": "k" * 201}),
    # -- requests that contradict what is stored
    Bad("same-name-other-spec", "POST", "/v1/curricula", 409, "CURRICULUM_EXISTS",
        body={**SPEC, "seed": 99}),
    Bad("delete-confirm-mismatch", "DELETE", f"{CUR}?confirm=MATH", 422, "INVALID_REQUEST"),
    Bad("method-not-allowed", "PUT", CUR, 405, "METHOD_NOT_ALLOWED", body={}),
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def seeded(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    """One service per backend holding a curriculum with a run, reports and a batch; every
    case runs against it and must leave it as it was."""
    def serve(url: str) -> Iterator[tuple[TestClient, str]]:
        with make_client(url, snapshot_every=2) as client:
            assert client.post("/v1/curricula", json=SPEC).status_code == 201
            assert client.post(f"{CUR}/runs", json={"run_id": "run-1"}).status_code == 201
            for step in range(3):
                # Steps Paceline did not serve: accepted on request (`unserved`).
                ack = client.post(REPORTS, json=report(step=step, idempotency_key=f"k{step}",
                                                       unserved="accept"))
                assert ack.status_code == 200
            assert client.post(f"{CUR}/batches", json={"run_id": "run-1", "step": 3}
                               ).status_code == 200
            yield client, url

    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("hostile") / "paceline.db"
        yield from serve(f"sqlite:///{path}")
    else:
        with fresh_pg_schema() as url:
            yield from serve(url)


def fingerprint(client: TestClient, url: str) -> tuple[bytes, ...]:
    export = io.StringIO()
    assert cli.main(["--database-url", url, "export", "math"], out=export) == 0
    return (client.get(f"{CUR}/state").content, client.get(CUR).content,
            client.get(f"{CUR}/runs").content, client.get("/v1/curricula").content,
            export.getvalue().encode())


@pytest.mark.parametrize("bad", CASES, ids=[case.id for case in CASES])
def test_refused_with_a_stable_code_and_nothing_changes(seeded: tuple[TestClient, str],
                                                        bad: Bad) -> None:
    client, url = seeded
    before = fingerprint(client, url)
    if bad.raw is not None:
        response = client.request(bad.method, bad.path, content=bad.raw, headers=bad.headers)
    else:
        response = client.request(bad.method, bad.path, json=bad.body, headers=bad.headers)
    assert response.status_code == bad.status, response.text
    error = response.json()["error"]
    assert error["code"] == bad.code, response.text
    assert error["message"]
    assert fingerprint(client, url) == before


def test_method_not_allowed_names_every_method_of_the_path(
        seeded: tuple[TestClient, str]) -> None:
    client, _ = seeded
    assert client.put(CUR).headers["allow"] == "GET, DELETE"
    assert client.put("/v1/curricula").headers["allow"] == "GET, POST"


def test_sql_metacharacters_and_unicode_in_run_ids_are_stored_literally(
        seeded: tuple[TestClient, str]) -> None:
    """Run ids are free text: hostile-looking ones are data, bound as parameters, and
    come back exactly; the tables they name are untouched."""
    client, _ = seeded
    seq = client.get(CUR).json()["seq"]
    for run_id in ("'; DROP TABLE events; --", "运行-1 🚀", "\u202erun", 'a"b\\c%_'):
        created = client.post(f"{CUR}/runs", json={"run_id": run_id})
        assert created.status_code == 201, created.text
        assert created.json()["run_id"] == run_id
        quoted = run_id.replace("%", "%25").replace("\\", "%5C").replace('"', "%22")
        fetched = client.get(f"{CUR}/runs/{quoted}")
        assert fetched.status_code == 200 and fetched.json()["run_id"] == run_id
    assert client.get(CUR).json()["seq"] == seq
    assert client.post(REPORTS, json=report(step=50, unserved="accept")).json()["seq"] == seq + 1
